package libvirt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"github.com/chimestack/chime-fence/hypervisor"
)

// Migration defaults.
const (
	// DefaultMigrateTimeout bounds a migration whose context has no
	// deadline. Copying local disks over a slow link can take longer: set
	// a deadline.
	DefaultMigrateTimeout = time.Hour
	// abortTimeout bounds the abort call after a cancelled migration, and
	// abortWait how long the migration call then gets to return.
	abortTimeout = 15 * time.Second
	abortWait    = 30 * time.Second
	// progressEvery is how often a running migration's job is read.
	progressEvery = 2 * time.Second
)

// migrationFlags are the flags of m: the source libvirtd drives it (peer to
// peer), the destination keeps the domain defined and the source forgets
// it, and a storage I/O error aborts it instead of pausing the guest.
func migrationFlags(m hypervisor.Migration) golibvirt.DomainMigrateFlags {
	f := golibvirt.MigratePeer2peer | golibvirt.MigratePersistDest | golibvirt.MigrateUndefineSource
	if m.Offline {
		f |= golibvirt.MigrateOffline
	} else {
		f |= golibvirt.MigrateLive | golibvirt.MigrateAbortOnError
	}
	if len(m.CopyDisks) > 0 {
		f |= golibvirt.MigrateNonSharedDisk
	}
	if m.AllowUnsafe {
		f |= golibvirt.MigrateUnsafe
	}
	return f
}

// migrationParams are m's typed parameters. Copying is limited to the
// listed disks: without migrate_disks libvirt would also copy every shared
// disk onto itself.
func migrationParams(m hypervisor.Migration) []golibvirt.TypedParam {
	var ps []golibvirt.TypedParam
	if m.DataURI != "" {
		ps = append(ps, golibvirt.TypedParam{Field: golibvirt.MigrateParamURI, Value: *golibvirt.NewTypedParamValueString(m.DataURI)})
	}
	for _, d := range m.CopyDisks {
		ps = append(ps, golibvirt.TypedParam{Field: golibvirt.MigrateParamMigrateDisks, Value: *golibvirt.NewTypedParamValueString(d)})
	}
	if m.BandwidthMiBs > 0 {
		ps = append(ps, golibvirt.TypedParam{Field: golibvirt.MigrateParamBandwidth, Value: *golibvirt.NewTypedParamValueUllong(m.BandwidthMiBs)})
	}
	return ps
}

// Migrate live-migrates a domain of this host to m.DestURI, peer to peer:
// this host's libvirtd connects to the destination and drives the whole
// transfer. On success the domain runs (or, Offline, is defined) on the
// destination, persistent, and is undefined here.
//
// The migration runs on a connection of its own, so the caller's other
// calls neither wait for it nor die with it. It obeys ctx (its deadline, or
// DefaultMigrateTimeout): when ctx ends first the job is aborted
// (DomainAbortJob) and Migrate returns after libvirt confirms, or after
// abortWait. An abort that comes too late (the switch-over began) lets the
// migration finish: after any error the caller must read back where the
// domain runs before it acts on the result.
//
// progress, if not nil, is called from another goroutine every couple of
// seconds while the job runs; it must not block.
func (c *Client) Migrate(ctx context.Context, m hypervisor.Migration, progress func(hypervisor.MigrationProgress)) error {
	step := "libvirt: migrate " + m.UUID
	if err := m.Validate(); err != nil {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: c.cfg.Host, Step: step, Err: err}
	}
	u, err := ParseUUID(m.UUID)
	if err != nil {
		return &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: c.cfg.Host, Step: step, Err: err}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultMigrateTimeout)
		defer cancel()
	}
	var dom golibvirt.Domain
	if err := c.call(ctx, "libvirt: lookup "+m.UUID, func(l *golibvirt.Libvirt) error {
		d, err := l.DomainLookupByUUID(u)
		dom = d
		return err
	}); err != nil {
		return err
	}

	// Own connection: a cancel must abort the job first, not just drop
	// the RPC (libvirtd would carry on migrating).
	mc := &Client{cfg: c.cfg, log: c.log, sem: make(chan struct{}, 1)}
	defer mc.Close()
	cn, err := mc.connection(ctx)
	if err != nil {
		return err
	}
	flags, params := migrationFlags(m), migrationParams(m)
	log := c.log.With().Str("uuid", m.UUID).Str("domain", dom.Name).Str("dest", m.DestURI).Logger()
	log.Info().Str("data_uri", m.DataURI).Strs("copy_disks", m.CopyDisks).Bool("offline", m.Offline).Msg("migration started")
	t0 := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := cn.l.DomainMigratePerform3Params(dom, golibvirt.OptString{m.DestURI}, params, nil, flags)
		done <- err
	}()

	var tick <-chan time.Time
	if progress != nil && !m.Offline {
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case err := <-done:
			if err == nil {
				log.Info().Dur("took", time.Since(t0)).Msg("migration done")
				return nil
			}
			kind := classifyMigrate(err)
			if !cn.l.IsConnected() || isConnError(err) {
				kind = hypervisor.KindUnreachable
			}
			return &hypervisor.Error{Kind: kind, Host: c.cfg.Host, Step: step, Err: err}
		case <-tick:
			if p, ok := c.jobProgress(ctx, dom); ok {
				p.UUID = m.UUID
				progress(p)
			}
		case <-ctx.Done():
			return c.abortMigration(ctx, dom, cn, done, step)
		}
	}
}

// abortMigration aborts dom's migration job after ctx ended and waits a
// bounded time for the migration call to return.
func (c *Client) abortMigration(ctx context.Context, dom golibvirt.Domain, cn *conn, done <-chan error, step string) error {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	abortErr := c.call(actx, "libvirt: abort migration "+FormatUUID(dom.UUID), func(l *golibvirt.Libvirt) error {
		return l.DomainAbortJob(dom)
	})
	cancel()
	var migErr error
	select {
	case migErr = <-done:
	case <-time.After(abortWait):
		cn.close()
		migErr = fmt.Errorf("no answer %s after the abort", abortWait)
	}
	err := c.ctxErr(ctx, step)
	he := err.(*hypervisor.Error)
	switch {
	case abortErr != nil:
		he.Err = fmt.Errorf("%w; abort failed (the migration may still complete: read back where the domain runs): %v; migration: %v", ctx.Err(), abortErr, migErr)
	case migErr == nil:
		he.Err = fmt.Errorf("%w; the migration completed before the abort took effect", ctx.Err())
	default:
		he.Err = fmt.Errorf("%w; migration aborted: %v", ctx.Err(), migErr)
	}
	c.log.Warn().Str("uuid", FormatUUID(dom.UUID)).Err(he).Msg("migration cancelled")
	return he
}

// jobProgress reads dom's job statistics; ok is false when there is no job
// (yet) or the call failed, which only costs a progress line.
func (c *Client) jobProgress(ctx context.Context, dom golibvirt.Domain) (hypervisor.MigrationProgress, bool) {
	var p hypervisor.MigrationProgress
	var typ int32
	pctx, cancel := context.WithTimeout(ctx, progressEvery)
	defer cancel()
	err := c.call(pctx, "libvirt: job stats", func(l *golibvirt.Libvirt) error {
		t, params, err := l.DomainGetJobStats(dom, 0)
		typ = t
		for _, tp := range params {
			v, ok := tp.Value.I.(uint64)
			if !ok {
				continue
			}
			switch tp.Field {
			case golibvirt.DomainJobTimeElapsed:
				p.Elapsed = time.Duration(v) * time.Millisecond
			case golibvirt.DomainJobDataTotal:
				p.DataTotal = v
			case golibvirt.DomainJobDataProcessed:
				p.DataProcessed = v
			case golibvirt.DomainJobDataRemaining:
				p.DataRemaining = v
			case golibvirt.DomainJobMemoryTotal:
				p.MemoryTotal = v
			case golibvirt.DomainJobMemoryProcessed:
				p.MemoryDone = v
			case golibvirt.DomainJobDiskTotal:
				p.DiskTotal = v
			case golibvirt.DomainJobDiskProcessed:
				p.DiskDone = v
			}
		}
		return err
	})
	if err != nil || golibvirt.DomainJobType(typ) == golibvirt.DomainJobNone {
		return p, false
	}
	return p, true
}

// classifyMigrate maps a failed migration to a kind: the generic mapping,
// plus libvirt's refusals that no retry elsewhere fixes.
func classifyMigrate(err error) hypervisor.Kind {
	var le golibvirt.Error
	if errors.As(err, &le) {
		switch golibvirt.ErrorNumber(le.Code) {
		case golibvirt.ErrMigrateUnsafe, golibvirt.ErrOperationUnsupported, golibvirt.ErrConfigUnsupported, golibvirt.ErrNoStoragePool:
			return hypervisor.KindInvalid
		case golibvirt.ErrOperationTimeout:
			return hypervisor.KindTimeout
		case golibvirt.ErrAuthFailed, golibvirt.ErrNoConnect:
			return hypervisor.KindUnreachable
		}
	}
	return classify(err)
}

// CopyTarget is a directory on this host where a migration copies a
// domain's local disks.
//
// libvirt creates the copies on the destination only inside an active
// storage pool whose target is the disk's directory; without one the
// migration fails with "no storage pool with matching target path". So
// before a migration with CopyDisks the caller prepares the destination:
// PrepareCopyTargets makes sure each directory is an active pool's target,
// creating a transient directory pool (named chime-migrate-<hash>) where
// there is none, and the returned release destroys only the pools it
// created. A transient pool leaves nothing defined; destroying it keeps
// the files.
func (c *Client) PrepareCopyTargets(ctx context.Context, dirs []string) (release func(context.Context) error, err error) {
	var created []golibvirt.StoragePool
	release = func(ctx context.Context) error {
		var errs []error
		for _, p := range created {
			errs = append(errs, c.call(ctx, "libvirt: destroy pool "+p.Name, func(l *golibvirt.Libvirt) error {
				return l.StoragePoolDestroy(p)
			}))
		}
		return errors.Join(errs...)
	}
	seen := map[string]bool{}
	for _, dir := range dirs {
		dir = filepath.Clean(dir)
		if seen[dir] {
			continue
		}
		seen[dir] = true
		if !filepath.IsAbs(dir) {
			_ = release(ctx)
			return nil, &hypervisor.Error{Kind: hypervisor.KindInvalid, Host: c.cfg.Host, Step: "libvirt: copy target", Err: fmt.Errorf("%q is not an absolute directory", dir)}
		}
		var pool golibvirt.StoragePool
		var made bool
		err := c.call(ctx, "libvirt: storage pool for "+dir, func(l *golibvirt.Libvirt) error {
			if _, err := l.StoragePoolLookupByTargetPath(dir); err == nil {
				return nil
			} else if !isNoPool(err) {
				return err
			}
			p, err := l.StoragePoolCreateXML(poolXML(dir), 0)
			pool, made = p, err == nil
			return err
		})
		if err != nil {
			_ = release(ctx)
			return nil, err
		}
		if made {
			created = append(created, pool)
			c.log.Info().Str("pool", pool.Name).Str("dir", dir).Msg("transient storage pool created for a migration's disk copies")
		}
	}
	return release, nil
}

func isNoPool(err error) bool {
	var le golibvirt.Error
	return errors.As(err, &le) && golibvirt.ErrorNumber(le.Code) == golibvirt.ErrNoStoragePool
}

// poolXML is a transient directory pool over dir; its name is derived from
// the path so two migrations into one directory agree on it.
func poolXML(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	var b strings.Builder
	b.WriteString("<pool type='dir'><name>chime-migrate-" + hex.EncodeToString(sum[:6]) + "</name><target><path>")
	_ = xml.EscapeText(&b, []byte(dir))
	b.WriteString("</path></target></pool>")
	return b.String()
}
