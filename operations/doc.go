// Package operations is the operator's side of the daemon: the host admin
// state machine (Check, pure), and the Manager that runs each accepted
// operation as an asynchronous task holding the host's lock.
//
// Work in progress: see the package's files for the contract.
package operations
