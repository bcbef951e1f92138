package mpinkex

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
)

// TestClientPipeline: with Pipeline the client returns right after Msg3,
// with the keys the server derives and the verdict still on the stream;
// ReadVerdict then reads the server's answer, whether acceptance or refusal.
func TestClientPipeline(t *testing.T) {
	d := sharedDomain(t)
	for _, tc := range []struct {
		name      string
		authorize func(string) error
		wantAlert AlertCode // 0: accepted
	}{
		{"accepted", allowAll, 0},
		{"refused", func(string) error { return errors.New("no") }, AlertHandshakeFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, sc := net.Pipe()
			defer cc.Close()
			scfg := d.serverConfig()
			scfg.Authorize = tc.authorize
			type out struct {
				res *Result
				err error
			}
			srv := make(chan out, 1)
			go func() {
				res, err := Server(context.Background(), sc, scfg)
				sc.Close()
				srv <- out{res, err}
			}()
			ccfg := d.clientConfig()
			ccfg.Pipeline = true
			res, err := Client(context.Background(), cc, ccfg)
			if err != nil {
				t.Fatalf("pipelined client: %v", err)
			}
			if !res.VerdictPending {
				t.Fatal("VerdictPending not set")
			}
			// net.Pipe is unbuffered: the server's Msg4 or Alert is still
			// waiting to be read, so Client cannot have read it.
			verr := ReadVerdict(cc)
			s := <-srv
			if tc.wantAlert == 0 {
				if verr != nil || s.err != nil {
					t.Fatalf("verdict %v, server %v", verr, s.err)
				}
				if !bytes.Equal(res.PSK, s.res.PSK) || res.PSKIdentity != s.res.PSKIdentity || s.res.VerdictPending {
					t.Fatal("pipelined client and server disagree on the keys")
				}
				return
			}
			var me *Error
			var ae *AlertError
			if !errors.As(verr, &me) || me.Role != "client" || me.Step != "read Msg4" || !errors.As(verr, &ae) || ae.Code != tc.wantAlert {
				t.Fatalf("verdict %v, want the server's %v", verr, tc.wantAlert)
			}
			if !errors.Is(s.err, ErrPolicy) {
				t.Fatalf("server: %v, want ErrPolicy", s.err)
			}
		})
	}
}

// TestReadVerdict: the server's answer to Msg3, byte by byte.
func TestReadVerdict(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []byte
		left  int       // bytes ReadVerdict must leave unread
		step  string    // "" = accepted
		alert AlertCode // with step "read Msg4"
		is    error
	}{
		{"Msg4", []byte{0, 2, TypeMsg4, 0}, 0, "", 0, nil},
		{"Msg4 then a record", []byte{0, 2, TypeMsg4, 0, 22, 0xfe, 0xfd}, 3, "", 0, nil},
		{"handshake_failure", []byte{0, 2, TypeAlert, 1}, 0, "read Msg4", AlertHandshakeFailure, nil},
		{"overloaded", []byte{0, 2, TypeAlert, 4}, 0, "read Msg4", AlertOverloaded, nil},
		{"Msg4 status 1", []byte{0, 2, TypeMsg4, 1}, 0, "parse Msg4", 0, ErrDecode},
		{"Msg4 trailing byte", []byte{0, 3, TypeMsg4, 0, 0}, 0, "parse Msg4", 0, ErrDecode},
		{"Msg2 type", []byte{0, 1, TypeMsg2}, 0, "parse Msg4", 0, ErrDecode},
		{"oversized", []byte{0x04, 0x01, TypeMsg4, 0}, 2, "read Msg4", 0, ErrDecode},
		{"empty frame", []byte{0, 0}, 0, "read Msg4", 0, ErrDecode},
		{"truncated", []byte{0, 2, TypeMsg4}, 0, "read Msg4", 0, ErrDecode},
		{"nothing", nil, 0, "read Msg4", 0, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.in)
			err := ReadVerdict(r)
			if r.Len() != tc.left {
				t.Errorf("%d bytes left unread, want %d", r.Len(), tc.left)
			}
			if tc.step == "" {
				if err != nil {
					t.Fatalf("ReadVerdict: %v", err)
				}
				return
			}
			var me *Error
			if !errors.As(err, &me) || me.Role != "client" || me.Step != tc.step {
				t.Fatalf("ReadVerdict: %v, want a client error at step %q", err, tc.step)
			}
			var ae *AlertError
			if got := errors.As(err, &ae); got != (tc.alert != 0) || (got && ae.Code != tc.alert) {
				t.Fatalf("ReadVerdict: %v, want alert %v", err, tc.alert)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("ReadVerdict: %v, want %v", err, tc.is)
			}
		})
	}
}

// FuzzReadVerdict: ReadVerdict never panics, accepts exactly the frame
// 00 02 04 00, and reads nothing past the one frame it looks at.
func FuzzReadVerdict(f *testing.F) {
	f.Add([]byte{0, 2, TypeMsg4, 0})
	f.Add([]byte{0, 2, TypeAlert, 4, 22})
	f.Add([]byte{0, 2, TypeMsg4})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		err := ReadVerdict(r)
		accepted := len(b) >= 4 && bytes.Equal(b[:4], []byte{0, 2, TypeMsg4, 0})
		if (err == nil) != accepted {
			t.Fatalf("ReadVerdict(%x) = %v", b, err)
		}
		var me *Error
		if err != nil && (!errors.As(err, &me) || me.Role != "client") {
			t.Fatalf("error %v is not a client *Error", err)
		}
		if len(b) >= 2 {
			n := int(b[0])<<8 | int(b[1])
			if n >= 1 && n <= MaxFrameSize && len(b) >= 2+n && r.Len() != len(b)-2-n {
				t.Fatalf("%d bytes left after a %d-byte frame of %d", r.Len(), n, len(b))
			}
		}
	})
}
