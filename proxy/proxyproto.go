package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
)

// PROXY protocol v2 (haproxy's proxy-protocol.txt §2.2), which the server
// sidecar sends to TCP backends with --proxy-protocol so they learn the
// client's address and its authenticated identity.

// proxyV2Sig is the 12-byte v2 signature.
var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// TLVIdentity is the TLV type carrying the authenticated client identity
// (UTF-8). It is in the range the specification reserves for application
// use (PP2_TYPE_MIN_CUSTOM..PP2_TYPE_MAX_CUSTOM = 0xE0..0xEF).
const TLVIdentity = 0xE0

// ProxyHeader is a decoded PROXY v2 header.
type ProxyHeader struct {
	Local    bool           // LOCAL command: no addresses
	Src, Dst netip.AddrPort // valid unless Local or unspecified family
	TLVs     map[byte][]byte
}

// Identity returns the client identity TLV, if present.
func (h *ProxyHeader) Identity() (string, bool) {
	v, ok := h.TLVs[TLVIdentity]
	return string(v), ok
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	switch v := a.(type) {
	case *net.TCPAddr:
		ap := v.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	case nil:
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// EncodeProxyV2 builds a PROXY v2 header for a TCP connection from src to
// dst carrying identity. Addresses of mixed or unknown families (a unix
// socket) give an UNSPEC header (no addresses), still carrying the
// identity, with command PROXY: the protocol lets a receiver accept it
// (nginx does) or refuse it (HAProxy 2.6 does); LOCAL instead would say
// the connection was not relayed for anyone, and a receiver may drop its
// TLVs.
func EncodeProxyV2(src, dst net.Addr, identity string) ([]byte, error) {
	if len(identity) > 0xffff-64 {
		return nil, errors.New("proxy v2: identity too long")
	}
	var addr []byte
	fam := byte(0x00) // UNSPEC
	s, ok1 := addrPort(src)
	d, ok2 := addrPort(dst)
	switch {
	case ok1 && ok2 && s.Addr().Is4() && d.Addr().Is4():
		fam = 0x11 // TCP over IPv4
		a, b := s.Addr().As4(), d.Addr().As4()
		addr = append(append(addr, a[:]...), b[:]...)
		addr = binary.BigEndian.AppendUint16(addr, s.Port())
		addr = binary.BigEndian.AppendUint16(addr, d.Port())
	case ok1 && ok2 && s.Addr().Is6() && d.Addr().Is6():
		fam = 0x21 // TCP over IPv6
		a, b := s.Addr().As16(), d.Addr().As16()
		addr = append(append(addr, a[:]...), b[:]...)
		addr = binary.BigEndian.AppendUint16(addr, s.Port())
		addr = binary.BigEndian.AppendUint16(addr, d.Port())
	}
	tlv := []byte{TLVIdentity}
	tlv = binary.BigEndian.AppendUint16(tlv, uint16(len(identity)))
	tlv = append(tlv, identity...)
	body := append(addr, tlv...)
	h := append([]byte{}, proxyV2Sig...)
	h = append(h, 0x21, fam) // version 2, command PROXY
	h = binary.BigEndian.AppendUint16(h, uint16(len(body)))
	return append(h, body...), nil
}

// ProxyV2Local is the PROXY v2 header of a connection the proxy makes on
// its own account, not for a client (command LOCAL, no addresses): what a
// health check sends a backend that expects a header on every connection,
// as HAProxy's check-send-proxy does.
func ProxyV2Local() []byte {
	return append(append([]byte{}, proxyV2Sig...), 0x20, 0x00, 0x00, 0x00)
}

// MaxProxyV2Size bounds a header ReadProxyV2 accepts.
const MaxProxyV2Size = 16 + 4096

// ReadProxyV2 reads and decodes one PROXY v2 header from r (for backends
// and tests). It reads exactly the header.
func ReadProxyV2(r io.Reader) (*ProxyHeader, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, fmt.Errorf("proxy v2 header: %w", err)
	}
	if !bytes.Equal(fixed[:12], proxyV2Sig) {
		return nil, errors.New("proxy v2 header: bad signature")
	}
	if fixed[12]>>4 != 2 {
		return nil, fmt.Errorf("proxy v2 header: version %d", fixed[12]>>4)
	}
	cmd := fixed[12] & 0x0f
	if cmd > 1 {
		return nil, fmt.Errorf("proxy v2 header: command %d", cmd)
	}
	n := int(binary.BigEndian.Uint16(fixed[14:]))
	if n > MaxProxyV2Size-16 {
		return nil, fmt.Errorf("proxy v2 header: %d bytes of addresses and TLVs", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("proxy v2 header: %w", err)
	}
	h := &ProxyHeader{Local: cmd == 0, TLVs: map[byte][]byte{}}
	var alen int
	switch fixed[13] {
	case 0x00:
	case 0x11:
		alen = 12
	case 0x21:
		alen = 36
	default:
		return nil, fmt.Errorf("proxy v2 header: unsupported family/protocol %#02x", fixed[13])
	}
	if len(body) < alen {
		return nil, errors.New("proxy v2 header: addresses truncated")
	}
	switch alen {
	case 12:
		h.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:]))
	case 36:
		h.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:]))
		h.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:]))
	}
	rest := body[alen:]
	for len(rest) > 0 {
		if len(rest) < 3 {
			return nil, errors.New("proxy v2 header: TLV truncated")
		}
		t, l := rest[0], int(binary.BigEndian.Uint16(rest[1:3]))
		if len(rest) < 3+l {
			return nil, errors.New("proxy v2 header: TLV truncated")
		}
		if _, dup := h.TLVs[t]; dup {
			return nil, fmt.Errorf("proxy v2 header: TLV %#02x repeated", t)
		}
		h.TLVs[t] = append([]byte(nil), rest[3:3+l]...)
		rest = rest[3+l:]
	}
	return h, nil
}
