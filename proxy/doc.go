// Package proxy moves bytes: it opens the plaintext listeners (HOST:PORT or
// unix:PATH), copies between an application connection and a secure stream
// with correct half-close and idle timeouts, and speaks the application-side
// protocols the sidecars offer (PROXY protocol v2, HTTP identity header,
// HTTP CONNECT). It knows nothing of keys: secure streams come from package
// psk.
package proxy
