package dta

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/milagro-sc/milagro/dta/keydir"
)

// benchPolicy lets one requester obtain client, permit and server shares:
// the request the issue's latency figure is about.
const benchToken = "bench-token-0123456789abcdef"

func benchPolicy(t testing.TB) *Policy {
	p, err := ParsePolicy([]byte(fmt.Sprintf(`requesters:
  - name: bench
    token_sha256: %q
    identities: ["spiffe://prod.example/**"]
    kinds: [client, permit, server]
    rate_per_minute: 100000000
`, HashToken(benchToken))))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// BenchmarkIssueParts splits one issuance for client+permit(2 epochs)+server
// shares into its parts: where a D-TA's time goes.
func BenchmarkIssueParts(b *testing.B) {
	a := fxNewAuthority(b, "dta-1", 86400)
	id := "spiffe://prod.example/ns/pay/sa/api"
	now := time.Unix(20415*86400+100, 0)
	b.Run("client-share", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.master.ClientShare(id); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("permit-share", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.master.PermitShare(id, 20415); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("server-share", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.master.ServerShare(id); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("issue-envelope", func(b *testing.B) {
		kinds := []keydir.Kind{keydir.KindClient, keydir.KindPermit, keydir.KindServer}
		for b.Loop() {
			if _, err := a.Issue(id, kinds, []uint64{20415, 20416}, now); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("audit-record-fsync", func(b *testing.B) {
		audit, err := OpenAudit(b.TempDir() + "/audit.log")
		if err != nil {
			b.Fatal(err)
		}
		defer audit.Close()
		for b.Loop() {
			if err := audit.Record(AuditEvent{Time: now, Event: AuditIssue, Requester: "bench", Identity: id, Result: "ok", Status: 200}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkServiceIssue is POST /v1/issue for client+permit+server over real
// HTTP on loopback, with the audit log fsynced per request, from parallel
// clients (b.RunParallel); ns/op is the inverse of the throughput.
func BenchmarkServiceIssue(b *testing.B) {
	a := fxNewAuthority(b, "dta-1", 86400)
	tmp := b.TempDir()
	audit, err := OpenAudit(tmp + "/audit.log")
	if err != nil {
		b.Fatal(err)
	}
	defer audit.Close()
	revs, err := OpenRevocations(tmp + "/revocations.json")
	if err != nil {
		b.Fatal(err)
	}
	svc, err := NewService(ServiceConfig{Authority: a.Authority, Policy: benchPolicy(b), Audit: audit, Revocations: revs, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(svc)
	defer srv.Close()
	body, _ := json.Marshal(IssueRequest{Identity: "spiffe://prod.example/ns/pay/sa/api", Kinds: []string{"client", "permit", "server"}})
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := srv.Client()
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/issue", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+benchToken)
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("HTTP %d: %s", resp.StatusCode, buf.String())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "issues/s")
}
