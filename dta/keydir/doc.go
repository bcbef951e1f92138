// Package keydir is the key directory format: the signed envelopes that
// Distributed Trust Authorities issue, and the on-disk directory that
// `milagro keys fetch` writes and the sidecar reads. Writer and reader live
// here so that both sides agree byte for byte.
//
// # Files
//
//	domain.json    public domain description, pinned by the operator:
//	               {"domain", "epoch_len", "dtas": [{"id", "url", "signing_key"}]}
//	               signing_key is the D-TA's Ed25519 public key, base64 (std).
//	<dta-id>.json  one envelope per D-TA (below)
//	client.token   only when a factor (PIN or passphrase) is used:
//	               {"v": 1, "identity", "token"}; token = ΣCS_i − f·A, hex.
//	               The client shares' values are then withheld from the
//	               envelopes on disk.
//
// # Envelope
//
//	{"payload": base64(P), "signature": base64(Ed25519(key, "milagro keydir envelope v1\x00" ‖ P)),
//	 "values": {"client": hex, "permit/<epoch>": hex, "server": hex, "domain": hex}}
//
// P is the exact JSON payload the D-TA signed (the reader never re-encodes
// it): {"v": 1, "domain", "dta", "identity", "epoch_len", "issued_at",
// "expires_at", "shares": [{"kind", "epoch" (permit only), "sha256"}]}.
// P must be canonical: compact JSON with exactly these keys in this order,
// times in RFC 3339 UTC with a "Z" (fractional seconds only if non-zero), as
// Go's encoding/json writes the Payload type; anything else is refused, so no
// two readers can see different content in the same signed bytes.
// Each share is committed by the SHA-256 of its compressed point, so a
// value can be withheld on disk (the client share when a token is used)
// without breaking the signature, while every value present is bound to it.
//
// # Directory
//
// Written Kubernetes-style: files go into a new folder `..gen-<timestamp>.<random>`
// (mode 0700, files 0600, fsynced), the `..data` symlink is replaced
// atomically by a rename, top-level symlinks `name → ..data/name` are
// created, and the previous folder is removed. A reader resolves `..data`
// once and reads the whole set from that folder, so it never sees a mix of
// two generations. Group- or world-accessible files and folders are refused,
// as ssh and stunnel do.
package keydir
