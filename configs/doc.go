// Package configs is chime-fence's configuration: the YAML schema, strict
// loading, validation, and the resolution of each host's effective fencing
// policy (built-in defaults → `defaults` → the rack's named policy → the
// rack's override → the host's override).
//
// Loading fails loudly: an unknown key, a bare number where a duration is
// expected, a missing reference — every problem in the file is reported at
// once, each with its path (`hosts[3].bmcs[0].port`) and line. A Config that
// Load returns is complete and valid; callers never re-check it.
//
// Secrets are never part of a Config: it holds the file or environment
// variable a secret comes from, and Secret.Read fetches it only when a driver
// needs it, so a Config can be printed (`config show`) without redaction
// mistakes.
//
// Reload is the caller's job: parse and validate a new file with Load and
// swap the pointer atomically; an invalid file leaves the old Config in use.
package configs
