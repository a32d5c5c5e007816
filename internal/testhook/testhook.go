// Package testhook gives the tests of this repository's other modules (contextd's, the session
// package's) the library's test-only settings, which package tiercache keeps unexported: they
// exist to prove that a checker sees the fault they cause, and no user should reach them. Being
// internal, only code under github.com/tiercache/tiercache can import it.
package testhook

// NoInvalidation switches the invalidation backplane off in the *tiercache.Options it is given:
// the instance neither publishes nor receives invalidations, so peers serve what it overwrote
// until their L1 lifetime ends. Package tiercache sets it when it is initialised.
var NoInvalidation func(opts any)
