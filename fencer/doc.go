// Package fencer proves hosts dead. Its rule: a fence level succeeds only
// when the host's state is read back — power Off from the BMC, never the
// BMC's word that it accepted the command.
//
// The verification is a pure state machine (OffVerifier): the caller feeds
// it each power reading with the time it was taken, and it answers whether
// the fence is verified, failed, or when to read again. PowerOff is the
// small imperative shell that sends the off command through a
// PowerController and drives the verifier with an injected Clock, so tests
// run it on virtual time.
//
// PowerController is the interface the fencer owns; drivers/ipmi and
// drivers/redfish satisfy it without importing this package. Each call must
// obey its context's deadline.
package fencer
