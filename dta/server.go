package dta

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/milagro-sc/milagro/mpinkex"
)

// MaxBodySize bounds request bodies.
const MaxBodySize = 16 << 10

// Service is the D-TA HTTP API. Its policy can be swapped at run time
// (SIGHUP) without dropping requests.
type Service struct {
	auth   *Authority
	policy atomic.Pointer[Policy]
	audit  *AuditLog
	revs   *Revocations
	now    func() time.Time
	log    zerolog.Logger

	mu       sync.Mutex
	limiters map[string]*rate.Limiter // by requester name, or "ip:" + address for failures
}

// ServiceConfig configures a Service.
type ServiceConfig struct {
	Authority   *Authority
	Policy      *Policy
	Audit       *AuditLog
	Revocations *Revocations
	Now         func() time.Time // default time.Now
	Log         zerolog.Logger
}

// NewService builds the API handler.
func NewService(cfg ServiceConfig) (*Service, error) {
	if cfg.Authority == nil || cfg.Policy == nil || cfg.Audit == nil || cfg.Revocations == nil {
		return nil, errors.New("dta service: authority, policy, audit log and revocations are required")
	}
	s := &Service{auth: cfg.Authority, audit: cfg.Audit, revs: cfg.Revocations, now: cfg.Now, log: cfg.Log, limiters: map[string]*rate.Limiter{}}
	if s.now == nil {
		s.now = time.Now
	}
	s.policy.Store(cfg.Policy)
	return s, nil
}

// SetPolicy replaces the policy; requests in flight finish with the old one.
func (s *Service) SetPolicy(p *Policy) {
	s.policy.Store(p)
	s.mu.Lock()
	s.limiters = map[string]*rate.Limiter{}
	s.mu.Unlock()
}

// InfoResponse is the body of GET /v1/info.
type InfoResponse struct {
	Info
	Epoch uint64    `json:"epoch"`
	Time  time.Time `json:"time"`
}

// RevokeRequest is the body of POST /v1/revoke.
type RevokeRequest struct {
	Identity string `json:"identity"`
	Unrevoke bool   `json:"unrevoke,omitempty"`
}

// ServeHTTP routes the API.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	switch r.URL.Path {
	case "/healthz":
		s.only(w, r, http.MethodGet, func() { writeJSON(w, http.StatusOK, map[string]string{"status": "ok"}) })
	case "/v1/info":
		s.only(w, r, http.MethodGet, func() { s.info(w) })
	case "/v1/issue":
		s.only(w, r, http.MethodPost, func() { s.issue(w, r) })
	case "/v1/revoke":
		s.only(w, r, http.MethodPost, func() { s.revoke(w, r) })
	case "/v1/revocations":
		s.only(w, r, http.MethodGet, func() { s.revocations(w, r) })
	default:
		writeError(w, http.StatusNotFound, "no such endpoint")
	}
}

func (s *Service) only(w http.ResponseWriter, r *http.Request, method string, f func()) {
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, "use "+method)
		return
	}
	f()
}

func (s *Service) info(w http.ResponseWriter) {
	now := s.now()
	e, _ := mpinkex.Epoch(now, time.Duration(s.auth.Info.EpochLen)*time.Second)
	writeJSON(w, http.StatusOK, InfoResponse{Info: s.auth.Info, Epoch: e, Time: now.UTC()})
}

// authenticate checks the bearer token and the requester's rate limit.
// On failure it has answered the request and audited the refusal.
func (s *Service) authenticate(w http.ResponseWriter, r *http.Request, event string) (*Requester, bool) {
	ip := remoteIP(r)
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	var req *Requester
	if ok && tok != "" {
		req, ok = s.policy.Load().Authenticate(tok)
	} else {
		ok = false
	}
	if !ok {
		if !s.limiter("ip:"+ip, 30).Allow() {
			w.Header().Set("Retry-After", "2")
			writeError(w, http.StatusTooManyRequests, "too many requests")
			return nil, false
		}
		s.record(AuditEvent{Event: "refuse", Result: "unauthenticated", Status: http.StatusUnauthorized, Reason: event + ": missing or unknown bearer token", Remote: ip})
		w.Header().Set("WWW-Authenticate", `Bearer realm="milagro-dta"`)
		writeError(w, http.StatusUnauthorized, "missing or unknown bearer token")
		return nil, false
	}
	if !s.limiter(req.Name, req.RatePerMinute).Allow() {
		s.record(AuditEvent{Event: "refuse", Requester: req.Name, Result: "rate limited", Status: http.StatusTooManyRequests, Reason: event, Remote: ip})
		per := req.RatePerMinute
		if per <= 0 {
			per = DefaultRatePerMinute
		}
		w.Header().Set("Retry-After", strconv.Itoa(max(1, (60+per-1)/per)))
		writeError(w, http.StatusTooManyRequests, "rate limit exceeded")
		return nil, false
	}
	return req, true
}

func (s *Service) limiter(key string, perMinute int) *rate.Limiter {
	if perMinute <= 0 {
		perMinute = 60
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.limiters[key]
	if !ok {
		if len(s.limiters) > 10000 {
			// Forget per-address limiters only: a spray of addresses must
			// not reset the requesters' limits.
			for k := range s.limiters {
				if strings.HasPrefix(k, "ip:") {
					delete(s.limiters, k)
				}
			}
		}
		burst := max(perMinute/6, 5)
		l = rate.NewLimiter(rate.Limit(float64(perMinute)/60), burst)
		s.limiters[key] = l
	}
	return l
}

func (s *Service) issue(w http.ResponseWriter, r *http.Request) {
	req, ok := s.authenticate(w, r, "issue")
	if !ok {
		return
	}
	ip := remoteIP(r)
	var body IssueRequest
	if status, err := decodeBody(w, r, &body); err != nil {
		s.record(AuditEvent{Event: "refuse", Requester: req.Name, Result: "bad request", Status: status, Reason: err.Error(), Remote: ip})
		writeError(w, status, err.Error())
		return
	}
	ev := AuditEvent{Event: "issue", Requester: req.Name, Identity: body.Identity, Kinds: body.Kinds, Epochs: body.Epochs, Remote: ip}
	now := s.now()
	kinds, epochs, err := body.Normalize(now, s.auth.Info.EpochLen)
	if err != nil {
		if !utf8ValidPrintable(body.Identity) {
			ev.Identity = fmt.Sprintf("%q", truncate(body.Identity, 300))
		}
		s.refuse(w, ev, http.StatusBadRequest, "bad request", err.Error(), err.Error())
		return
	}
	ev.Epochs = epochs
	if err := req.Authorize(body.Identity, kinds); err != nil {
		s.refuse(w, ev, http.StatusForbidden, "forbidden", err.Error(), err.Error())
		return
	}
	if s.revs.IsRevoked(body.Identity) {
		s.refuse(w, ev, http.StatusForbidden, "revoked", "identity is revoked", "identity is revoked")
		return
	}
	env, err := s.auth.Issue(body.Identity, kinds, epochs, now)
	if err != nil {
		s.log.Error().Err(err).Str("requester", req.Name).Msg("issue failed")
		s.refuse(w, ev, http.StatusInternalServerError, "internal error", "issuance failed", "issuance failed")
		return
	}
	ev.Result, ev.Status = "ok", http.StatusOK
	// The audit record is written before the shares leave: an issuance that
	// cannot be audited does not happen.
	if err := s.audit.Record(withTime(ev, now)); err != nil {
		s.log.Error().Err(err).Msg("audit log write failed; refusing to issue")
		writeError(w, http.StatusInternalServerError, "audit log unavailable")
		return
	}
	s.log.Info().Str("requester", req.Name).Str("identity", body.Identity).Strs("kinds", body.Kinds).Uints64("epochs", epochs).Msg("issued")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(env.Marshal())
}

func (s *Service) revoke(w http.ResponseWriter, r *http.Request) {
	req, ok := s.authenticate(w, r, "revoke")
	if !ok {
		return
	}
	ip := remoteIP(r)
	var body RevokeRequest
	if status, err := decodeBody(w, r, &body); err != nil {
		s.record(AuditEvent{Event: "refuse", Requester: req.Name, Result: "bad request", Status: status, Reason: "revoke: " + err.Error(), Remote: ip})
		writeError(w, status, err.Error())
		return
	}
	event := "revoke"
	if body.Unrevoke {
		event = "unrevoke"
	}
	ev := AuditEvent{Event: event, Requester: req.Name, Identity: body.Identity, Remote: ip}
	if !req.Admin {
		s.refuse(w, ev, http.StatusForbidden, "forbidden", event+": requester is not an admin", "only admin requesters may revoke")
		return
	}
	if err := mpinkex.ValidateID(body.Identity); err != nil {
		ev.Identity = fmt.Sprintf("%q", truncate(body.Identity, 300))
		s.refuse(w, ev, http.StatusBadRequest, "bad request", err.Error(), "identity: "+err.Error())
		return
	}
	var changed bool
	var err error
	if body.Unrevoke {
		changed, err = s.revs.Unrevoke(body.Identity, req.Name)
	} else {
		changed, err = s.revs.Revoke(body.Identity, req.Name, s.now())
	}
	if err != nil {
		s.log.Error().Err(err).Msg("revocation store write failed")
		ev.Result, ev.Status, ev.Reason = "internal error", http.StatusInternalServerError, err.Error()
		s.record(ev)
		writeError(w, http.StatusInternalServerError, "revocation store unavailable")
		return
	}
	ev.Result, ev.Status = "ok", http.StatusOK
	s.record(ev)
	s.log.Info().Str("requester", req.Name).Str("identity", body.Identity).Bool("changed", changed).Msg(event)
	writeJSON(w, http.StatusOK, map[string]any{"identity": body.Identity, "revoked": !body.Unrevoke, "changed": changed})
}

func (s *Service) revocations(w http.ResponseWriter, r *http.Request) {
	req, ok := s.authenticate(w, r, "revocations")
	if !ok {
		return
	}
	if !req.Admin {
		s.record(AuditEvent{Event: "refuse", Requester: req.Name, Result: "forbidden", Status: http.StatusForbidden, Reason: "revocations: requester is not an admin", Remote: remoteIP(r)})
		writeError(w, http.StatusForbidden, "only admin requesters may list revocations")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"revocations": s.revs.List()})
}

// refuse audits ev as a refusal (result, reason) and answers status with
// the JSON error msg.
func (s *Service) refuse(w http.ResponseWriter, ev AuditEvent, status int, result, reason, msg string) {
	ev.Event, ev.Result, ev.Status, ev.Reason = "refuse", result, status, reason
	s.record(ev)
	writeError(w, status, msg)
}

func (s *Service) record(e AuditEvent) {
	if err := s.audit.Record(withTime(e, s.now())); err != nil {
		s.log.Error().Err(err).Msg("audit log write failed")
	}
}

func withTime(e AuditEvent, t time.Time) AuditEvent {
	if e.Time.IsZero() {
		e.Time = t.UTC()
	}
	return e
}

// decodeBody reads a bounded JSON body strictly.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) (int, error) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return http.StatusUnsupportedMediaType, fmt.Errorf("content type %q: send application/json", truncate(ct, 100))
		}
	}
	body := http.MaxBytesReader(w, r.Body, MaxBodySize)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("body exceeds %d bytes", MaxBodySize)
		}
		return http.StatusBadRequest, fmt.Errorf("malformed JSON body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("body exceeds %d bytes", MaxBodySize)
		}
		return http.StatusBadRequest, errors.New("malformed JSON body: trailing data")
	}
	return 0, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorResponse{Error: msg})
}

func remoteIP(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func utf8ValidPrintable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return false
		}
	}
	return true
}

// NewHTTPServer wraps the service with the timeouts and limits of a
// public-facing server.
func NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}
