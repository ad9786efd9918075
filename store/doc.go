// Package store is the daemon's embedded state: one bbolt file under the
// state directory (Path), holding the history of everything the daemon
// decided, each host's admin state, each domain's home host, and small
// per-host memos that must survive a restart.
//
// Caller contract:
//
//   - One process owns the file. Open takes an exclusive lock and gives up
//     after Options.LockTimeout with ErrLocked ("another chime-fence daemon
//     probably runs"). A file that is not a chime-fence store or is damaged
//     is ErrCorrupt; one written by a newer build is ErrSchema. Open vets an
//     existing file read-only (a full page walk, Check) before opening it
//     for writing, so damage stops the daemon at start; it never panics on
//     a bad file.
//   - Every write is one transaction and durable (fsynced) when the call
//     returns nil; on error nothing of that call was written. Write what
//     must be known before acting (e.g. the verdict that leads to a fence)
//     and only act after the write returned nil.
//   - SetAdminState writes the state and its history record together or not
//     at all. A host absent from AdminStates is node.Enabled.
//   - Append assigns IDs: strictly increasing, never reused, continuing
//     across restarts. Records need At (from the caller's clock, stored in
//     UTC) and Kind. The store never reads the clock itself.
//   - History keeps the newest Options.MaxRecords records and prunes older
//     ones on Append. Queries return the newest Limit matches, oldest first.
//     Host, Kind and CorrelationID are indexed; Since is checked on every
//     candidate because At may jump with the clock. A stored value that does
//     not decode is reported as ErrCorrupt naming it, never skipped.
//   - Safe for concurrent use. Concurrent writes share transactions (group
//     commit), so many hosts changing state at once cost few fsyncs.
//   - Errors wrap with %w, name the step and the file, and can be tested
//     with errors.Is against ErrLocked, ErrCorrupt, ErrSchema, ErrInvalid and
//     ErrClosed. If bbolt panics inside a write (a damaged file), the store
//     refuses further writes with ErrCorrupt until it is reopened.
package store
