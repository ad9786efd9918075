// Package fencer proves hosts dead. Its rule: a fence level succeeds only
// when the host's state is read back — power Off from the BMC, or for
// agent-drain the agent reporting no running domain — never on a driver's
// word that it accepted the command.
//
// Pieces, from pure to imperative:
//
//   - OffVerifier is a pure state machine: fed timed readings, it answers
//     verified, failed, or when to read again (with a settle delay for BMCs
//     that report Off early).
//   - Gate is pure bookkeeping of the policy's limits: fences in flight in
//     total and per rack, and the minimum interval between fence starts.
//   - PowerOff is one power level attempt: off command, then read-back.
//   - Run executes a Plan: every level in order, retries with backoff inside
//     a level, reboot's power-on afterwards. It calls drivers and sleeps
//     only through the injected Clock, so tests run it on virtual time.
//
// Caller contract:
//
//   - Only Result.Verified allows an evacuation. A Result that is not
//     verified, for any reason (levels failed, plan invalid, ctx ended),
//     leaves the host unreachable, and Result.Reason is the one-line alert
//     text naming every level and why it failed.
//   - Build a Plan from the host's effective policy: one LevelPlan per level
//     with its driver already built; when a driver cannot be built, pass the
//     level anyway with SetupErr so the record names it. This package does
//     not import configs. Plan.Validate is the dry-run check; Run makes the
//     same checks and fails a bad level without acting on it.
//   - Ask Gate.Admit before Run and call Gate.Done after it, verified or
//     not; lock around the Gate (it is not safe for concurrent use). After a
//     restart, Gate.Resume the fences the journal shows started and not
//     ended. The storm guard is checked by the caller before either.
//   - Journal the fence start before Run and the Result after it. Run may
//     take up to the sum over levels of (1+Retries)·Timeout plus backoffs;
//     cancel ctx to stop it at once (not verified).
//   - A reboot action powers the host on after the verified off, with one
//     attempt; its failure is Result.PowerOnErr and does not undo the
//     fence. Either way the caller sets the host drained. When agent-drain
//     verified, nothing was powered off, so nothing is powered on.
//   - An auth or config error ends a level without retries; other errors
//     are retried after Backoff, doubling, capped at the level's Timeout.
//   - Errors in a Result are the drivers' text, which keeps credentials out;
//     this package adds none. Logs are zerolog with component=fencer.
//
// PowerController and Drainer are the interfaces the fencer owns;
// drivers/ipmi and drivers/redfish satisfy PowerController, and an adapter
// over drivers/agent satisfies Drainer, none importing this package. Each
// call must obey its context's deadline.
package fencer
