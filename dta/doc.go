// Package dta is a Distributed Trust Authority: it keeps one master share
// s_i at rest (age-encrypted), serves the issuance API over HTTPS (requester
// authorisation, rate limits, revocation, an fsynced audit log), and holds
// the client that fetches envelopes from every D-TA of a domain and writes
// the key directory (package dta/keydir) that sidecars read.
//
// A D-TA alone can impersonate nobody: every key is the sum of one share from
// each D-TA of the domain (PROTOCOL.md §4), so only all of them together
// could — key escrow is inherent in the design and stated in the README.
package dta
