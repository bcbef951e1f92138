// Package sidecar is the runtime of `milagro server` and `milagro client`:
// configuration (flags, MILAGRO_* environment, optional YAML), the keystore
// (load, validate, hot reload), the authorisation policy, observability
// (zerolog, Prometheus, /_status, /healthz, /readyz) and the lifecycle
// (signals, bounded handshakes, drain). It wires packages mpinkex, psk and
// proxy; it reads keys only through dta/keydir.
package sidecar
