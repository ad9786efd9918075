#!/bin/sh
# fresh-machine.sh CMD [ARG...]: runs CMD as on a fresh Debian machine
# where libvirt-daemon-system was never installed: in a private mount
# namespace where /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt,
# /var/log/libvirt and /run/libvirt do not exist. Each one that exists is
# hidden by a tmpfs over its parent that holds every other entry of the
# parent (bind-mounted, symlinks copied). Nothing changes outside the
# namespace and nothing is written to disk. Needs root. The fresh-machine
# test (e2e TestDemoScript) runs `make demo`'s script through it, so a lab
# that depends on a distro package's directories fails in CI.
set -eu
if [ "${CHIME_FRESH_MACHINE:-}" != 1 ]; then
	export CHIME_FRESH_MACHINE=1
	exec unshare --mount --propagation private sh "$0" "$@"
fi
[ $# -gt 0 ] || { echo "usage: $0 CMD [ARG...]" >&2; exit 2; }
hide="/etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run/libvirt"
# The originals stay reachable through a stash on a tmpfs of this namespace
# (/mnt is only a mount point here) while the parents are rebuilt.
stash=/mnt
mount -t tmpfs -o mode=0700 fresh-stash "$stash"
for d in $hide; do
	[ -e "$d" ] || continue
	p=$(dirname "$d") b=$(basename "$d") s="$stash/$(echo "$p" | tr / _)"
	mkdir "$s"
	mount --rbind "$p" "$s"
	mount -t tmpfs -o mode=0755 fresh-machine "$p"
	ls -A "$s" | while IFS= read -r n; do
		[ "$n" = "$b" ] && continue
		if [ -L "$s/$n" ]; then
			cp -P "$s/$n" "$p/$n"
		elif [ -d "$s/$n" ]; then
			mkdir -p "$p/$n" && mount --rbind "$s/$n" "$p/$n"
		else
			: >>"$p/$n" && mount --bind "$s/$n" "$p/$n"
		fi || echo "$0: $p/$n stays empty: could not bind-mount it" >&2
	done
done
umount -l "$stash"
hidden=""
for d in $hide; do
	[ ! -e "$d" ] || { echo "fresh-machine: $d still exists" >&2; exit 1; }
	hidden="$hidden $d"
done
echo "fresh-machine: none of$hidden exists here"
exec "$@"
