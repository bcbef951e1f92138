package proxy

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func tcpAddr(s string) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))
}

const testIdentity = "spiffe://test.example/ns/web/sa/frontend"

func TestProxyV2RoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name     string
		src, dst net.Addr
		identity string
		family   byte
		wantSrc  string // "" = no addresses
		wantDst  string
	}{
		{"ipv4", tcpAddr("10.1.2.3:40000"), tcpAddr("192.168.7.8:8443"), testIdentity, 0x11, "10.1.2.3:40000", "192.168.7.8:8443"},
		{"ipv6", tcpAddr("[2001:db8::1]:1"), tcpAddr("[::1]:65535"), testIdentity, 0x21, "[2001:db8::1]:1", "[::1]:65535"},
		{"ipv4-mapped ipv6 is ipv4", tcpAddr("[::ffff:127.0.0.1]:5000"), tcpAddr("[::ffff:127.0.0.2]:6000"), "a", 0x11, "127.0.0.1:5000", "127.0.0.2:6000"},
		{"mixed families", tcpAddr("10.0.0.1:1"), tcpAddr("[2001:db8::2]:2"), testIdentity, 0x00, "", ""},
		{"mixed mapped and ipv6", tcpAddr("[::ffff:10.0.0.1]:1"), tcpAddr("[2001:db8::2]:2"), testIdentity, 0x00, "", ""},
		{"no addresses", nil, nil, testIdentity, 0x00, "", ""},
		{"unix addresses", &net.UnixAddr{Name: "/run/a.sock", Net: "unix"}, &net.UnixAddr{Name: "/run/b.sock", Net: "unix"}, testIdentity, 0x00, "", ""},
		{"empty identity", tcpAddr("1.2.3.4:5"), tcpAddr("6.7.8.9:10"), "", 0x11, "1.2.3.4:5", "6.7.8.9:10"},
		{"utf-8 identity", tcpAddr("1.2.3.4:5"), tcpAddr("6.7.8.9:10"), "spiffe://ex/ns/ünïcödé/✓", 0x11, "1.2.3.4:5", "6.7.8.9:10"},
		{"long identity", tcpAddr("1.2.3.4:5"), tcpAddr("6.7.8.9:10"), strings.Repeat("x", 255), 0x11, "1.2.3.4:5", "6.7.8.9:10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := EncodeProxyV2(tc.src, tc.dst, tc.identity)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(h, []byte("\r\n\r\n\x00\r\nQUIT\n")) || h[12] != 0x21 || h[13] != tc.family {
				t.Fatalf("header starts % x, want signature, 0x21, family %#02x", h[:min(len(h), 14)], tc.family)
			}
			if n := int(binary.BigEndian.Uint16(h[14:16])); n != len(h)-16 {
				t.Fatalf("length field %d, header %d bytes", n, len(h))
			}
			// The reader takes exactly the header and leaves the data.
			r := bytes.NewReader(append(append([]byte{}, h...), "payload"...))
			got, err := ReadProxyV2(r)
			if err != nil {
				t.Fatal(err)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "payload" {
				t.Errorf("after the header: %q, want payload", rest)
			}
			if got.Local {
				t.Error("Local set for a PROXY command")
			}
			id, ok := got.Identity()
			if !ok || id != tc.identity {
				t.Errorf("identity %q, %v; want %q", id, ok, tc.identity)
			}
			if len(got.TLVs) != 1 {
				t.Errorf("TLVs %v, want only the identity", got.TLVs)
			}
			if tc.wantSrc == "" {
				if got.Src.IsValid() || got.Dst.IsValid() {
					t.Errorf("addresses %v → %v in an UNSPEC header", got.Src, got.Dst)
				}
				return
			}
			if got.Src.String() != tc.wantSrc || got.Dst.String() != tc.wantDst {
				t.Errorf("addresses %v → %v, want %s → %s", got.Src, got.Dst, tc.wantSrc, tc.wantDst)
			}
		})
	}
}

// The exact bytes of an IPv4 header (haproxy proxy-protocol.txt §2.2).
func TestProxyV2WireFormat(t *testing.T) {
	h, err := EncodeProxyV2(tcpAddr("192.0.2.1:443"), tcpAddr("198.51.100.2:8443"), "id")
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
		0x21,       // v2, PROXY
		0x11,       // TCP over IPv4
		0x00, 0x11, // 12 + 5 bytes
		192, 0, 2, 1, 198, 51, 100, 2, // src, dst
		0x01, 0xbb, 0x20, 0xfb, // 443, 8443
		0xe0, 0x00, 0x02, 'i', 'd', // TLV 0xE0
	}
	if !bytes.Equal(h, want) {
		t.Fatalf("header\n% x\nwant\n% x", h, want)
	}
}

func TestEncodeProxyV2TooLong(t *testing.T) {
	if _, err := EncodeProxyV2(nil, nil, strings.Repeat("x", 0xffff)); err == nil {
		t.Error("EncodeProxyV2 accepted a 64 KiB identity")
	}
}

// hdr builds a raw v2 header: verCmd, fam and body, with a correct length.
func hdr(verCmd, fam byte, body []byte) []byte {
	h := append([]byte("\r\n\r\n\x00\r\nQUIT\n"), verCmd, fam)
	h = binary.BigEndian.AppendUint16(h, uint16(len(body)))
	return append(h, body...)
}

func tlv(typ byte, v string) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

func TestReadProxyV2Accepts(t *testing.T) {
	// LOCAL (health checks): no addresses, Local set.
	h, err := ReadProxyV2(bytes.NewReader(hdr(0x20, 0x00, nil)))
	if err != nil || !h.Local || h.Src.IsValid() || len(h.TLVs) != 0 {
		t.Errorf("LOCAL: %+v, %v", h, err)
	}
	if _, ok := h.Identity(); ok {
		t.Error("identity in a header without TLVs")
	}
	// Several TLVs, the identity among them.
	body := append(make([]byte, 12), tlv(0x04, "noop")...)
	body = append(body, tlv(TLVIdentity, "me")...)
	body = append(body, tlv(0x05, "")...)
	h, err = ReadProxyV2(bytes.NewReader(hdr(0x21, 0x11, body)))
	if err != nil || len(h.TLVs) != 3 {
		t.Fatalf("%+v, %v", h, err)
	}
	if id, ok := h.Identity(); !ok || id != "me" {
		t.Errorf("identity %q %v", id, ok)
	}
	// The largest accepted header.
	big := tlv(0x04, strings.Repeat("z", MaxProxyV2Size-16-3))
	if _, err := ReadProxyV2(bytes.NewReader(hdr(0x21, 0x00, big))); err != nil {
		t.Errorf("header of MaxProxyV2Size: %v", err)
	}
}

func TestReadProxyV2Rejects(t *testing.T) {
	good := hdr(0x21, 0x11, append(make([]byte, 12), tlv(TLVIdentity, "me")...))
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "EOF"},
		{"short fixed part", good[:15], "EOF"},
		{"v1 text header", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "bad signature"},
		{"bad signature", append([]byte("\r\n\r\n\x00\r\nQUIX\n"), good[12:]...), "bad signature"},
		{"version 1", hdr(0x11, 0x11, make([]byte, 12)), "version 1"},
		{"version 3", hdr(0x31, 0x11, make([]byte, 12)), "version 3"},
		{"command 2", hdr(0x22, 0x11, make([]byte, 12)), "command 2"},
		{"command 15", hdr(0x2f, 0x00, nil), "command 15"},
		{"too long", hdr(0x21, 0x00, make([]byte, MaxProxyV2Size-16+1)), "bytes of addresses and TLVs"},
		{"body truncated", good[:len(good)-1], "EOF"},
		{"udp over ipv4", hdr(0x21, 0x12, make([]byte, 12)), "unsupported family/protocol"},
		{"unix stream", hdr(0x21, 0x31, make([]byte, 216)), "unsupported family/protocol"},
		{"unknown family", hdr(0x21, 0x41, nil), "unsupported family/protocol"},
		{"ipv4 addresses truncated", hdr(0x21, 0x11, make([]byte, 11)), "addresses truncated"},
		{"ipv6 addresses truncated", hdr(0x21, 0x21, make([]byte, 35)), "addresses truncated"},
		{"TLV header truncated", hdr(0x21, 0x11, append(make([]byte, 12), 0xe0, 0x00)), "TLV truncated"},
		{"TLV value truncated", hdr(0x21, 0x00, []byte{0xe0, 0x00, 0x05, 'a', 'b'}), "TLV truncated"},
		{"TLV repeated", hdr(0x21, 0x00, append(tlv(TLVIdentity, "a"), tlv(TLVIdentity, "b")...)), "repeated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ReadProxyV2(bytes.NewReader(tc.in))
			if err == nil {
				t.Fatalf("accepted: %+v", h)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
}

// A reader that returns one byte at a time still gets the whole header.
func TestReadProxyV2ByteByByte(t *testing.T) {
	h, _ := EncodeProxyV2(tcpAddr("[2001:db8::7]:7"), tcpAddr("[2001:db8::8]:8"), testIdentity)
	got, err := ReadProxyV2(&oneByteReader{b: h})
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := got.Identity(); id != testIdentity || got.Src.Port() != 7 || got.Dst.Port() != 8 {
		t.Errorf("%+v", got)
	}
}

type oneByteReader struct{ b []byte }

func (r *oneByteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

// FuzzReadProxyV2: the reader never panics, never reads past the header,
// bounds what it allocates, and every header it accepts re-encodes to the
// same addresses and identity (byte for byte when the input is what
// EncodeProxyV2 writes: PROXY, only the identity TLV, no IPv4-mapped
// addresses).
func FuzzReadProxyV2(f *testing.F) {
	for _, s := range [][2]string{
		{"10.1.2.3:40000", "192.168.7.8:8443"},
		{"[2001:db8::1]:1", "[::1]:2"},
		{"10.1.2.3:1", "[::1]:2"},
	} {
		h, _ := EncodeProxyV2(tcpAddr(s[0]), tcpAddr(s[1]), testIdentity)
		f.Add(h)
	}
	f.Add(hdr(0x20, 0x00, nil))
	f.Add(hdr(0x21, 0x11, append(make([]byte, 12), tlv(0xe0, "")...)))
	f.Add(hdr(0x21, 0x00, append(tlv(0xe0, "a"), tlv(0xe0, "b")...)))
	f.Add([]byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		h, err := ReadProxyV2(r)
		if err != nil {
			if h != nil {
				t.Fatal("header returned with an error")
			}
			return
		}
		n := len(data) - r.Len()
		if n < 16 || n != 16+int(binary.BigEndian.Uint16(data[14:16])) || n > MaxProxyV2Size {
			t.Fatalf("consumed %d bytes of a header declaring %d", n, binary.BigEndian.Uint16(data[14:16]))
		}
		if h.Local != (data[12]&0x0f == 0) {
			t.Fatalf("Local %v for command byte %#02x", h.Local, data[12])
		}
		switch data[13] {
		case 0x00:
			if h.Src.IsValid() || h.Dst.IsValid() {
				t.Fatal("addresses in an UNSPEC header")
			}
		case 0x11:
			if !h.Src.Addr().Is4() || !h.Dst.Addr().Is4() {
				t.Fatal("IPv4 header with other addresses")
			}
		case 0x21:
			if !h.Src.Addr().Is6() || !h.Dst.Addr().Is6() {
				t.Fatal("IPv6 header with other addresses")
			}
		default:
			t.Fatalf("accepted family %#02x", data[13])
		}
		id, hasID := h.Identity()
		if !hasID {
			return
		}
		var src, dst net.Addr
		if h.Src.IsValid() {
			src, dst = net.TCPAddrFromAddrPort(h.Src), net.TCPAddrFromAddrPort(h.Dst)
		}
		enc, err := EncodeProxyV2(src, dst, id)
		if err != nil {
			if len(id) <= 0xffff-64 {
				t.Fatalf("re-encode: %v", err)
			}
			return
		}
		h2, err := ReadProxyV2(bytes.NewReader(enc))
		if err != nil {
			if len(enc) > MaxProxyV2Size {
				return // cannot happen from an accepted header, but not this test's point
			}
			t.Fatalf("re-encoded header refused: %v\n% x", err, enc)
		}
		if id2, _ := h2.Identity(); id2 != id || h2.Local {
			t.Fatalf("identity %q → %q", id, id2)
		}
		mapped := h.Src.Addr().Is4In6() || h.Dst.Addr().Is4In6()
		if !mapped && (h2.Src != h.Src || h2.Dst != h.Dst) {
			t.Fatalf("addresses %v→%v re-encode as %v→%v", h.Src, h.Dst, h2.Src, h2.Dst)
		}
		if mapped && h.Src.Addr().Is4In6() && h.Dst.Addr().Is4In6() &&
			(h2.Src.Addr() != h.Src.Addr().Unmap() || h2.Dst.Addr() != h.Dst.Addr().Unmap()) {
			t.Fatalf("mapped addresses %v→%v re-encode as %v→%v", h.Src, h.Dst, h2.Src, h2.Dst)
		}
		if !h.Local && len(h.TLVs) == 1 && !mapped && !bytes.Equal(enc, data[:n]) {
			t.Fatalf("canonical header re-encodes differently:\n% x\n% x", data[:n], enc)
		}
	})
}

// TestProxyV2Local: the LOCAL header reads back as LOCAL, with no
// addresses and no TLVs.
func TestProxyV2Local(t *testing.T) {
	h, err := ReadProxyV2(bytes.NewReader(ProxyV2Local()))
	if err != nil || !h.Local || h.Src.IsValid() || len(h.TLVs) != 0 {
		t.Errorf("ReadProxyV2(ProxyV2Local()) = %+v, %v", h, err)
	}
}
