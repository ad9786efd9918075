package evacuator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/chimestack/chime-fence/heartbeat"
)

// The mirror: each host's captured domain XML as plain files on shared
// storage (<MirrorDir>/<host>/<uuid>.xml), for an operator to read or
// `virsh define` by hand when the daemon itself is gone.

// mirror brings <MirrorDir>/<host> in line with the capture: the whole
// directory the first time (and after a failure), then only what changed.
// Failures are logged and counted; the journal already holds the truth.
func (c *Capture) mirror(st *hostState, d inventoryDiff) {
	dir := filepath.Join(c.cfg.MirrorDir, st.name)
	var errs []error
	if !st.mirrorSynced {
		errs = syncMirrorDir(dir, d, c.beforeRename)
	} else {
		for _, u := range d.xmlChanged {
			if err := writeMirrorFile(dir, u, d.current[u], c.beforeRename); err != nil {
				errs = append(errs, err)
			}
		}
		for _, u := range d.remove {
			if err := removeMirrorFile(dir, u); err != nil {
				errs = append(errs, err)
			}
		}
	}
	st.mirrorSynced = len(errs) == 0
	if len(errs) > 0 {
		c.mirrorFailures.Add(uint64(len(errs)))
		c.log.Error().Str("host", st.name).Str("dir", dir).Err(errors.Join(errs...)).
			Msg("domain XML mirror not updated (the journal is); retrying the whole directory at the next capture")
	}
}

// syncMirrorDir writes every current definition whose file differs, and
// removes files of domains no longer defined and temporary files left by a
// crash. Files it did not write (other names) are left alone.
func syncMirrorDir(dir string, d inventoryDiff, hook func(tmp, final string)) []error {
	var errs []error
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return []error{fmt.Errorf("read mirror dir: %w", err)}
	}
	for _, e := range entries {
		name := e.Name()
		if u, ok := strings.CutSuffix(name, ".xml"); ok && heartbeat.ValidUUID(u) && !d.keep[u] {
			if err := removeMirrorFile(dir, u); err != nil {
				errs = append(errs, err)
			}
		}
		if strings.HasPrefix(name, ".") && strings.HasSuffix(name, mirrorTmpSuffix) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove stale temporary file: %w", err))
			}
		}
	}
	uuids := make([]string, 0, len(d.current))
	for u := range d.current {
		uuids = append(uuids, u)
	}
	sort.Strings(uuids)
	for _, u := range uuids {
		if b, err := os.ReadFile(filepath.Join(dir, u+".xml")); err == nil && string(b) == d.current[u] {
			continue
		}
		if err := writeMirrorFile(dir, u, d.current[u], hook); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

const mirrorTmpSuffix = ".tmp"

// writeMirrorFile replaces <dir>/<uuid>.xml atomically: a reader sees the
// old file or the new one, never a part, even across a crash.
func writeMirrorFile(dir, uuid, xml string, hook func(tmp, final string)) (err error) {
	if !heartbeat.ValidUUID(uuid) {
		return fmt.Errorf("domain UUID %q is not canonical; not used as a file name", uuid)
	}
	final := filepath.Join(dir, uuid+".xml")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write %s: %w", final, err)
	}
	f, err := os.CreateTemp(dir, "."+uuid+".xml.*"+mirrorTmpSuffix)
	if err != nil {
		return fmt.Errorf("write %s: %w", final, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", final, err)
		}
	}()
	if _, err := f.WriteString(xml); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if hook != nil {
		hook(tmp, final)
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	return syncDir(dir)
}

func removeMirrorFile(dir, uuid string) error {
	if !heartbeat.ValidUUID(uuid) {
		return nil // never written
	}
	p := filepath.Join(dir, uuid+".xml")
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return syncDir(dir)
}

// syncDir makes a rename or removal in dir durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// ReadMirror returns the mirrored definition of uuid captured on host
// (<dir>/<host>/<uuid>.xml) and when it was written. It is where a
// rebuild's XML comes from when the journal has none: a daemon that
// just started for the first time, on a cluster whose mirror an earlier
// daemon (or a standby) wrote. ok is false when there is no such file.
func ReadMirror(dir, host, uuid string) (xml string, written time.Time, ok bool, err error) {
	if dir == "" {
		return "", time.Time{}, false, nil
	}
	if err := checkHostName(host); err != nil {
		return "", time.Time{}, false, fmt.Errorf("read mirror: %w", err)
	}
	if uuid == "" || strings.ContainsAny(uuid, "/\x00") || uuid == "." || uuid == ".." {
		return "", time.Time{}, false, fmt.Errorf("read mirror of host %s: bad UUID %q", host, uuid)
	}
	p := filepath.Join(dir, host, uuid+".xml")
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", time.Time{}, false, nil
	}
	if err != nil {
		return "", time.Time{}, false, fmt.Errorf("read mirror of host %s: %w", host, err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return "", time.Time{}, false, fmt.Errorf("read mirror of host %s: %w", host, err)
	}
	return string(b), fi.ModTime(), true, nil
}
