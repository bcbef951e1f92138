package keydir

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"

	"github.com/milagro-sc/milagro/mpinkex"
)

// DomainFile is the name of the domain description in a key directory.
const DomainFile = "domain.json"

// Domain is the public description of a trust domain: its D-TAs, their
// signing keys, and the epoch length of time permits.
type Domain struct {
	Name     string `json:"domain"`
	EpochLen uint64 `json:"epoch_len"` // seconds
	DTAs     []DTA  `json:"dtas"`
}

// DTA is one Distributed Trust Authority of a domain.
type DTA struct {
	ID         string `json:"id"`
	URL        string `json:"url"`
	SigningKey string `json:"signing_key"` // Ed25519 public key, base64
}

var dtaIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// ValidDTAID reports whether id can name a D-TA (and so an envelope file).
func ValidDTAID(id string) bool { return dtaIDRe.MatchString(id) }

// PublicKey decodes the D-TA's signing key.
func (d *DTA) PublicKey() (ed25519.PublicKey, error) {
	k, err := base64.StdEncoding.DecodeString(d.SigningKey)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("D-TA %s: signing_key must be a base64 Ed25519 public key", d.ID)
	}
	return ed25519.PublicKey(k), nil
}

// ParseDomain decodes and validates domain.json.
func ParseDomain(b []byte) (*Domain, error) {
	var d Domain
	if err := strictUnmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("parse %s: %w", DomainFile, err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// Validate checks the domain description.
func (d *Domain) Validate() error {
	if err := mpinkex.ValidateID(d.Name); err != nil {
		return fmt.Errorf("domain name: %w", err)
	}
	if d.EpochLen == 0 || d.EpochLen > 366*86400 {
		return fmt.Errorf("domain %s: epoch_len must be 1..%d seconds", d.Name, 366*86400)
	}
	if len(d.DTAs) == 0 {
		return fmt.Errorf("domain %s lists no D-TA", d.Name)
	}
	seen := map[string]bool{}
	keys := map[string]bool{}
	for i := range d.DTAs {
		t := &d.DTAs[i]
		if !ValidDTAID(t.ID) {
			return fmt.Errorf("domain %s: D-TA id %q must match %s", d.Name, t.ID, dtaIDRe)
		}
		if seen[t.ID] {
			return fmt.Errorf("domain %s: D-TA %s listed twice", d.Name, t.ID)
		}
		seen[t.ID] = true
		if _, err := t.PublicKey(); err != nil {
			return fmt.Errorf("domain %s: %w", d.Name, err)
		}
		if keys[t.SigningKey] {
			return fmt.Errorf("domain %s: D-TA %s reuses another D-TA's signing key", d.Name, t.ID)
		}
		keys[t.SigningKey] = true
		u, err := url.Parse(t.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("domain %s: D-TA %s: url %q must be http(s)://host[:port]", d.Name, t.ID, t.URL)
		}
	}
	return nil
}

// Marshal encodes the domain description (indented, for operators).
func (d *Domain) Marshal() []byte {
	b, _ := json.MarshalIndent(d, "", "  ")
	return append(b, '\n')
}

// DTA returns the D-TA with the given id.
func (d *Domain) DTA(id string) (*DTA, bool) {
	for i := range d.DTAs {
		if d.DTAs[i].ID == id {
			return &d.DTAs[i], true
		}
	}
	return nil, false
}
