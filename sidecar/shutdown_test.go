package sidecar

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func httpPost(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Post(url, "text/plain", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestShutdownEndpoint: with --enable-shutdown, POST /_shutdown drains the
// sidecar as SIGTERM does (ready turns false, open connections go on, Run
// returns nil once they end); without it there is no such endpoint, and
// only POST stops the sidecar.
func TestShutdownEndpoint(t *testing.T) {
	for _, side := range []string{"server", "client"} {
		t.Run(side, func(t *testing.T) {
			p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, c *ClientConfig) {
				s.Status, c.Status = "127.0.0.1:0", "127.0.0.1:0"
				if side == "server" {
					s.EnableShutdown = true
				} else {
					c.EnableShutdown = true
				}
			})
			sst, cst := statusAddr(t, p.sLog, "server ready"), statusAddr(t, p.cLog, "client ready")
			st, other, r := sst, cst, p.srvRun
			if side == "client" {
				st, other, r = cst, sst, p.cliRun
			}
			if code := httpPost(t, "http://"+other+"/_shutdown"); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
				t.Errorf("POST /_shutdown without --enable-shutdown: %d", code)
			}
			app := p.dialApp(t)
			if err := pingEcho(app); err != nil {
				t.Fatal(err)
			}
			if code, _ := httpGet(t, "http://"+st+"/_shutdown"); code != http.StatusMethodNotAllowed {
				t.Errorf("GET /_shutdown: %d, want 405", code)
			}
			if code := httpPost(t, "http://"+st+"/_shutdown"); code != http.StatusAccepted {
				t.Fatalf("POST /_shutdown: %d, want 202", code)
			}
			waitFor(t, 5*time.Second, "not ready while draining", func() bool {
				code, _ := httpGet(t, "http://"+st+"/readyz")
				return code == http.StatusServiceUnavailable
			})
			if err := pingEcho(app); err != nil {
				t.Errorf("open connection during the drain: %v", err)
			}
			select {
			case <-r.done:
				t.Fatal("Run returned with a connection open")
			default:
			}
			app.Close()
			select {
			case <-r.done:
				if r.err != nil {
					t.Errorf("Run after the drain: %v, want nil", r.err)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("Run did not return after the last connection closed")
			}
			if lines := logLines(t, map[bool]*logBuf{true: p.sLog, false: p.cLog}[side == "server"], "shutdown requested through /_shutdown"); len(lines) != 1 || lines[0]["from"] == "" {
				t.Errorf("log lines %v, want one naming the caller", lines)
			}
			// The other sidecar is untouched.
			if code, _ := httpGet(t, "http://"+other+"/healthz"); code != http.StatusOK {
				t.Errorf("the other sidecar's /healthz: %d", code)
			}
		})
	}
}

// TestShutdownLoopbackOnly: POST /_shutdown from an address of this host
// that is not loopback (as the kubelet's probes come from outside the pod)
// is refused, and the sidecar goes on.
func TestShutdownLoopbackOnly(t *testing.T) {
	var ip net.IP
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			ip = n.IP
			break
		}
	}
	if ip == nil {
		t.Skip("no non-loopback IPv4 address on this host")
	}
	p := startPair(t, echoBackend(t, 0), func(s *ServerConfig, _ *ClientConfig) {
		s.Status, s.EnableShutdown = net.JoinHostPort(ip.String(), "0"), true
	})
	st := statusAddr(t, p.sLog, "server ready")
	if code := httpPost(t, "http://"+st+"/_shutdown"); code != http.StatusForbidden {
		t.Errorf("POST /_shutdown from %s: %d, want 403", ip, code)
	}
	time.Sleep(100 * time.Millisecond)
	if p.srv.draining.Load() {
		t.Error("a refused /_shutdown started the drain")
	}
	if err := echoOnce(p.clientListen, []byte("still")); err != nil {
		t.Errorf("after a refused /_shutdown: %v", err)
	}
}
