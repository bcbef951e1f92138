package validate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/milagro-sc/milagro/dta"
	"github.com/milagro-sc/milagro/dta/keydir"
	"github.com/milagro-sc/milagro/dta/pattern"
)

// object is one document of a manifest file, decoded into its API type.
type object struct {
	where string // file#index
	meta  metav1.TypeMeta
	obj   any
}

// newObject returns an empty object of the API type for apiVersion/kind.
func newObject(tm metav1.TypeMeta) (any, bool) {
	switch tm.APIVersion + "/" + tm.Kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, true
	case "batch/v1/Job":
		return &batchv1.Job{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1/Namespace":
		return &corev1.Namespace{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	}
	return nil, false
}

// loadManifests decodes every document of every examples/kubernetes/*.yaml
// strictly: unknown or duplicate fields are errors.
func loadManifests(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(examplesDir, "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in examples/kubernetes (%v)", err)
	}
	var objs []object
	for _, f := range files {
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader([]byte(readFile(t, f)))))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", rel(f), err)
			}
			where := fmt.Sprintf("%s#%d", rel(f), i)
			var tm metav1.TypeMeta
			if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if tm.Kind == "" && tm.APIVersion == "" {
				var v any
				if err := sigsyaml.Unmarshal(doc, &v); err != nil || v != nil {
					t.Errorf("%s: a document without apiVersion and kind (%v)", where, err)
				}
				continue // only comments
			}
			obj, ok := newObject(tm)
			if !ok {
				t.Errorf("%s: unexpected %s %s; add its type to newObject", where, tm.APIVersion, tm.Kind)
				continue
			}
			if err := sigsyaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s: %s %s: %v", where, tm.APIVersion, tm.Kind, err)
				continue
			}
			objs = append(objs, object{where: where, meta: tm, obj: obj})
		}
	}
	return objs
}

// workload is a pod template with where it came from.
type workload struct {
	where, kind, name, namespace string
	replicas                     *int32
	strategy                     *appsv1.DeploymentStrategy
	tmpl                         *corev1.PodTemplateSpec
}

func workloads(objs []object) []workload {
	var ws []workload
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			ws = append(ws, workload{o.where, "Deployment", v.Name, v.Namespace, v.Spec.Replicas, &v.Spec.Strategy, &v.Spec.Template})
		case *appsv1.StatefulSet:
			ws = append(ws, workload{o.where, "StatefulSet", v.Name, v.Namespace, v.Spec.Replicas, nil, &v.Spec.Template})
		case *appsv1.DaemonSet:
			ws = append(ws, workload{o.where, "DaemonSet", v.Name, v.Namespace, nil, nil, &v.Spec.Template})
		case *batchv1.Job:
			ws = append(ws, workload{o.where, "Job", v.Name, v.Namespace, nil, nil, &v.Spec.Template})
		}
	}
	return ws
}

// isMilagroImage reports whether image is the milagro image (any registry
// and tag).
func isMilagroImage(image string) bool {
	repo := image
	if i := strings.LastIndexByte(repo, '@'); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
		repo = repo[:i]
	}
	return path.Base(repo) == "milagro"
}

// milagroArgv returns the milagro command line a container runs, if any:
// the image's ENTRYPOINT ["milagro"] with args, or an explicit command.
func milagroArgv(c *corev1.Container) []string {
	switch {
	case len(c.Command) > 0 && path.Base(c.Command[0]) == "milagro":
		return append(slices.Clone(c.Command), c.Args...)
	case len(c.Command) == 0 && isMilagroImage(c.Image):
		return append([]string{"milagro"}, c.Args...)
	}
	return nil
}

// mountOf finds the volume mount of c that holds file p.
func mountOf(c *corev1.Container, p string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) &&
			(best == nil || len(m.MountPath) > len(best.MountPath)) {
			best = m
		}
	}
	return best
}

func volumeNamed(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

func isMemoryEmptyDir(v *corev1.Volume) bool {
	return v != nil && v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory
}

// checkSecurityContext requires a restricted container: non-root, read-only
// root file system, no privilege escalation, all capabilities dropped,
// seccomp RuntimeDefault (the container's or the pod's).
func checkSecurityContext(t *testing.T, where string, pod *corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s: container %s has no securityContext", where, c.Name)
		return
	}
	psc := pod.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	nonRoot := sc.RunAsNonRoot != nil && *sc.RunAsNonRoot || sc.RunAsNonRoot == nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	if !nonRoot {
		t.Errorf("%s: container %s: runAsNonRoot must be true", where, c.Name)
	}
	if uid := sc.RunAsUser; uid != nil && *uid == 0 || uid == nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: container %s runs as uid 0", where, c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: container %s: readOnlyRootFilesystem must be true", where, c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: container %s: allowPrivilegeEscalation must be false", where, c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: container %s is privileged", where, c.Name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: container %s: capabilities must drop ALL and add none", where, c.Name)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = psc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: container %s: seccompProfile must be RuntimeDefault", where, c.Name)
	}
}

// fetcher is a `milagro keys fetch` container.
type fetcher struct {
	index int // in initContainers, or -1
	c     *corev1.Container
	p     *parsed
}

// TestKubernetesManifests decodes every manifest strictly and checks the
// properties the examples promise.
func TestKubernetesManifests(t *testing.T) {
	c := milagroCLI(t)
	objs := loadManifests(t)
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.meta.Kind]++
	}
	for _, k := range []string{"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "Job"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in examples/kubernetes", k)
		}
	}
	ws := workloads(objs)
	var (
		invs        []invocation
		servers     []*parsed // server command lines
		clients     []*parsed
		fetches     []*parsed
		serverPorts = map[string]bool{} // "name.namespace:port" of Services in front of server sidecars
	)
	for _, w := range ws {
		where := fmt.Sprintf("%s (%s %s)", w.where, w.kind, w.name)
		spec := &w.tmpl.Spec
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken must be false (nothing here uses the API)", where)
		}
		all := append(slices.Clone(spec.InitContainers), spec.Containers...)
		for i := range all {
			checkSecurityContext(t, where, spec, &all[i])
		}
		// Secret volumes: nothing for others.
		for _, v := range spec.Volumes {
			if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o007 != 0) {
				t.Errorf("%s: Secret volume %s must set a defaultMode without bits for others", where, v.Name)
			}
		}
		// ReadWriteOnce volumes: one pod at a time.
		for _, v := range spec.Volumes {
			if v.PersistentVolumeClaim == nil {
				continue
			}
			pvc := findPVC(objs, v.PersistentVolumeClaim.ClaimName)
			if pvc == nil {
				t.Errorf("%s: PVC %s is not defined in examples/kubernetes", where, v.PersistentVolumeClaim.ClaimName)
				continue
			}
			if w.kind == "Deployment" && slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) {
				if w.replicas == nil || *w.replicas != 1 || w.strategy == nil || w.strategy.Type != appsv1.RecreateDeploymentStrategyType {
					t.Errorf("%s: a ReadWriteOnce volume needs replicas: 1 and strategy Recreate", where)
				}
			}
			if psc := spec.SecurityContext; psc != nil && psc.FSGroup != nil &&
				(psc.FSGroupChangePolicy == nil || *psc.FSGroupChangePolicy != corev1.FSGroupChangeOnRootMismatch) {
				t.Errorf("%s: with fsGroup and a persistent volume, set fsGroupChangePolicy: OnRootMismatch, or the kubelet makes the D-TA's 0600 files group-readable at every mount and the D-TA refuses them", where)
			}
		}

		var fetchersHere []fetcher
		hasServer := false
		var serverSleep int64    // the server container's preStop sleep
		serverDrain := int64(30) // its --shutdown-timeout, in seconds
		preStopSleep := func(ct *corev1.Container) int64 {
			if ct.Lifecycle != nil && ct.Lifecycle.PreStop != nil && ct.Lifecycle.PreStop.Sleep != nil {
				return ct.Lifecycle.PreStop.Sleep.Seconds
			}
			return 0
		}
		for i := range all {
			ct := &all[i]
			isInit := i < len(spec.InitContainers)
			sidecar := isInit && ct.RestartPolicy != nil && *ct.RestartPolicy == corev1.ContainerRestartPolicyAlways
			for _, pr := range []*corev1.Probe{ct.StartupProbe, ct.ReadinessProbe, ct.LivenessProbe} {
				if pr != nil && pr.Exec != nil && len(pr.Exec.Command) > 0 && path.Base(pr.Exec.Command[0]) == "milagro" {
					inv := invocation{where: where + " " + ct.Name + " exec probe", argv: pr.Exec.Command}
					invs = append(invs, inv)
					c.mustParse(t, inv)
				}
			}
			argv := milagroArgv(ct)
			if argv == nil {
				if isMilagroImage(ct.Image) {
					t.Errorf("%s: container %s uses the milagro image with a command that is not milagro", where, ct.Name)
				}
				continue
			}
			inv := invocation{where: where + " container " + ct.Name, argv: argv}
			invs = append(invs, inv)
			p := c.mustParse(t, inv)
			if p == nil {
				continue
			}
			longRunning := p.cmd == "server" || p.cmd == "client" || p.cmd == "keys fetch" && p.has("watch") || p.cmd == "dta serve"
			if isInit && longRunning && !sidecar {
				t.Errorf("%s: init container %s runs `milagro %s`, which never exits: make it a native sidecar (restartPolicy: Always)", where, ct.Name, p.cmd)
			}
			if isInit && !longRunning && sidecar {
				t.Errorf("%s: init container %s has restartPolicy Always but runs `milagro %s`, which exits", where, ct.Name, p.cmd)
			}
			switch p.cmd {
			case "keys fetch":
				fetches = append(fetches, p)
				idx := -1
				if isInit {
					idx = i
				}
				fetchersHere = append(fetchersHere, fetcher{idx, ct, p})
				checkFetcher(t, where, spec, i, ct, p)
			case "server", "client":
				if p.cmd == "server" {
					servers = append(servers, p)
					hasServer = true
				} else {
					clients = append(clients, p)
				}
				switch {
				case p.cmd == "client" && !sidecar:
					t.Errorf("%s: `milagro client` in container %s should be a native sidecar (an init container with restartPolicy: Always), so that it starts before the app and stops after it", where, ct.Name)
				case p.cmd == "server" && isInit:
					// Kubernetes stops a native sidecar only once the app
					// has exited: meanwhile clients' warm sessions would
					// carry new connections to a dead backend.
					t.Errorf("%s: `milagro server` in container %s should be a regular container beside the app, so that it gets SIGTERM with the app and sends its clients GoAway at once (and the app a preStop sleep, to outlive the drain's start)", where, ct.Name)
				case p.cmd == "server":
					// It serves on while the Service drops the pod (on
					// SIGTERM it closes its listener, and dials that
					// still reach it would be refused).
					if serverSleep = preStopSleep(ct); serverSleep < 3 {
						t.Errorf("%s: `milagro server` in container %s needs lifecycle.preStop.sleep (a few seconds), so that it accepts while the Service stops sending new connections to the pod", where, ct.Name)
					}
					v := p.get("shutdown-timeout") // the flag overrides the environment
					if v == "" {
						v = envValue(ct, "MILAGRO_SHUTDOWN_TIMEOUT")
					}
					if v != "" {
						d, err := time.ParseDuration(v)
						if err != nil {
							t.Errorf("%s: --shutdown-timeout %q: %v", where, v, err)
						}
						serverDrain = int64(d.Seconds())
					}
				}
				checkStatusProbes(t, where, ct, p)
				checkKeysFromFetcher(t, where, spec, i, ct, p, fetchersHere)
			case "dta serve":
				checkDTA(t, where, spec, ct, p)
			case "dta init":
				if v := envSecret(ct, "MILAGRO_DTA_PASSPHRASE"); !v && !p.has("passphrase-file") && !p.has("age-recipient") {
					t.Errorf("%s: dta init needs MILAGRO_DTA_PASSPHRASE from a Secret", where)
				}
				if p.has("insecure-plaintext-key") {
					t.Errorf("%s: --insecure-plaintext-key is for development only", where)
				}
			}
		}
		if hasServer {
			// The app behind a server must outlive the GoAway: a preStop
			// sleep delays its SIGTERM while clients move away, and the
			// grace period covers that sleep and the server's drain.
			for _, ct := range spec.Containers {
				if milagroArgv(&ct) != nil {
					continue
				}
				sleep := preStopSleep(&ct)
				if sleep <= serverSleep {
					t.Errorf("%s: app container %s behind milagro server needs a lifecycle.preStop.sleep longer than the server's (%d s), so that it serves while the server's GoAway moves clients to other replicas", where, ct.Name, serverSleep)
				}
				if g := spec.TerminationGracePeriodSeconds; g == nil || *g < max(sleep, serverSleep+serverDrain) {
					t.Errorf("%s: terminationGracePeriodSeconds must cover the app's preStop sleep (%d s) and the server's sleep and drain (%d + %d s)", where, sleep, serverSleep, serverDrain)
				}
			}
			for _, o := range objs {
				if s, ok := o.obj.(*corev1.Service); ok && selects(s.Spec.Selector, w.tmpl.Labels) {
					for _, sp := range s.Spec.Ports {
						serverPorts[fmt.Sprintf("%s.%s.svc:%d", s.Name, s.Namespace, sp.Port)] = true
					}
				}
			}
		}
	}
	if len(servers) == 0 || len(clients) == 0 || len(fetches) < 2 {
		t.Errorf("want server and client sidecars and their fetchers; found %d servers, %d clients, %d fetchers", len(servers), len(clients), len(fetches))
	}
	checkServices(t, objs, ws)
	checkReferences(t, objs, ws)
	checkPolicy(t, objs, fetches)
	checkPeers(t, servers, clients, fetches, serverPorts)
	for _, inv := range invs {
		checkRuns(t, c, inv)
	}
	t.Logf("%d objects, %d milagro command lines", len(objs), len(invs))
}

func findPVC(objs []object, name string) *corev1.PersistentVolumeClaim {
	for _, o := range objs {
		if v, ok := o.obj.(*corev1.PersistentVolumeClaim); ok && v.Name == name {
			return v
		}
	}
	return nil
}

// envValue is the literal value of c's environment variable name ("" if
// it has none, or takes it from a Secret or ConfigMap).
func envValue(c *corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func envSecret(c *corev1.Container, name string) bool {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value == "" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
		}
	}
	return false
}

// checkFetcher: the tokens, one per D-TA in the folder --token-file names,
// are 0400 copies in memory (a Secret volume would be refused), domain.json
// comes from a ConfigMap, the keys go to a memory volume, and a startup
// probe holds the next sidecar back until they exist.
func checkFetcher(t *testing.T, where string, spec *corev1.PodSpec, i int, ct *corev1.Container, p *parsed) {
	t.Helper()
	if !p.has("watch") {
		t.Errorf("%s: %s: keys fetch without --watch would not renew the time permits", where, ct.Name)
	}
	tok := p.get("token-file")
	tm := mountOf(ct, tok)
	switch v := volumeOf(spec, tm); {
	case tok == "":
		checkTokenFolder(t, where+" "+ct.Name, p, nil)
	case tm == nil || v == nil:
		t.Errorf("%s: %s: --token-file %s is on no volume", where, ct.Name, tok)
	case v.Secret != nil || v.Projected != nil:
		t.Errorf("%s: %s: --token-file %s is on a Secret volume: milagro refuses it (root-owned, or group-readable with fsGroup); copy the tokens into a memory emptyDir first", where, ct.Name, tok)
	case !isMemoryEmptyDir(v):
		t.Errorf("%s: %s: --token-file %s should be on an emptyDir with medium Memory", where, ct.Name, tok)
	default:
		files := tokensCopied(t, where, spec, i, v.Name, tm.MountPath)
		if len(files) == 0 {
			t.Errorf("%s: %s: no earlier init container installs the tokens into volume %s (install -m 0400 ...)", where, ct.Name, v.Name)
		}
		checkTokenFolder(t, where+" "+ct.Name, p, files)
	}
	if d := p.get("domain"); d != "" {
		if v := volumeOf(spec, mountOf(ct, d)); v == nil || v.ConfigMap == nil {
			t.Errorf("%s: %s: --domain %s should come from a ConfigMap volume", where, ct.Name, d)
		}
	}
	out := p.get("out")
	m := mountOf(ct, out)
	if v := volumeOf(spec, m); !isMemoryEmptyDir(v) || m.ReadOnly {
		t.Errorf("%s: %s: --out %s should be a writable emptyDir with medium Memory", where, ct.Name, out)
	}
	sp := ct.StartupProbe
	if sp == nil || sp.Exec == nil || !slices.Equal(sp.Exec.Command, []string{"milagro", "keys", "show", out}) {
		t.Errorf("%s: %s: want startupProbe exec [milagro keys show %s], so that the sidecars after it start once keys exist", where, ct.Name, out)
	}
}

func volumeOf(spec *corev1.PodSpec, m *corev1.VolumeMount) *corev1.Volume {
	if m == nil {
		return nil
	}
	return volumeNamed(spec, m.Name)
}

// tokensCopied returns the files that the `install` commands of the init
// containers before index i write into volume, as seen where the fetcher
// mounts it (at mountPath). Their sources must come from a Secret volume.
func tokensCopied(t *testing.T, where string, spec *corev1.PodSpec, i int, volume, mountPath string) []tokenFile {
	t.Helper()
	var files []tokenFile
	for j := 0; j < i && j < len(spec.InitContainers); j++ {
		c := &spec.InitContainers[j]
		argv := append(slices.Clone(c.Command), c.Args...)
		if len(argv) == 0 || path.Base(argv[0]) != "install" {
			continue
		}
		ic, err := parseInstall(argv)
		if err != nil {
			t.Errorf("%s: init container %s: %v", where, c.Name, err)
			continue
		}
		for _, d := range ic.dests {
			m := mountOf(c, d)
			if m == nil || m.Name != volume || m.ReadOnly || ic.dir {
				continue
			}
			r, _ := filepath.Rel(m.MountPath, d)
			files = append(files, tokenFile{path: path.Join(mountPath, filepath.ToSlash(r)), mode: ic.mode})
		}
		for _, src := range ic.srcs {
			sm := mountOf(c, src)
			v := volumeOf(spec, sm)
			if v == nil || v.Secret == nil {
				t.Errorf("%s: init container %s copies %s, which is not on a Secret volume", where, c.Name, src)
				continue
			}
			r, _ := filepath.Rel(sm.MountPath, src)
			if len(v.Secret.Items) > 0 && !slices.ContainsFunc(v.Secret.Items, func(k corev1.KeyToPath) bool { return k.Path == filepath.ToSlash(r) }) {
				t.Errorf("%s: init container %s copies %s, but Secret volume %s has no item with path %s", where, c.Name, src, v.Name, r)
			}
		}
	}
	return files
}

// statusPort returns the port of --status; it must be reachable from the
// kubelet, i.e. not bound to loopback.
func statusPort(t *testing.T, where string, p *parsed) int {
	t.Helper()
	st := p.get("status")
	if st == "" {
		t.Errorf("%s: milagro %s without --status cannot be probed", where, p.cmd)
		return 0
	}
	host, port, err := net.SplitHostPort(st)
	if err != nil {
		t.Errorf("%s: --status %q: %v", where, st, err)
		return 0
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		t.Errorf("%s: --status %s listens on loopback, where the kubelet's probes cannot reach it; use :%s", where, st, port)
	}
	n, _ := strconv.Atoi(port)
	return n
}

func checkStatusProbes(t *testing.T, where string, ct *corev1.Container, p *parsed) {
	t.Helper()
	port := statusPort(t, where, p)
	if port == 0 {
		return
	}
	probe := func(what string, pr *corev1.Probe, wantPath string, required bool) {
		if pr == nil {
			if required {
				t.Errorf("%s: %s: no %s probe", where, ct.Name, what)
			}
			return
		}
		if pr.HTTPGet == nil || pr.HTTPGet.Path != wantPath || pr.HTTPGet.Port.IntValue() != port {
			t.Errorf("%s: %s: %s probe should be GET %s on the status port %d", where, ct.Name, what, wantPath, port)
		}
	}
	probe("readiness", ct.ReadinessProbe, "/readyz", true)
	probe("liveness", ct.LivenessProbe, "/healthz", true)
	probe("startup", ct.StartupProbe, "/readyz", false)
	declared := false
	for _, cp := range ct.Ports {
		declared = declared || int(cp.ContainerPort) == port
	}
	if !declared {
		t.Errorf("%s: %s: declare the status port %d in ports", where, ct.Name, port)
	}
}

// checkKeysFromFetcher: the sidecar reads --keys from the volume that an
// earlier native sidecar fetches into, read-only.
func checkKeysFromFetcher(t *testing.T, where string, spec *corev1.PodSpec, i int, ct *corev1.Container, p *parsed, fs []fetcher) {
	t.Helper()
	keys := p.get("keys")
	m := mountOf(ct, keys)
	if m == nil || m.MountPath != keys {
		t.Errorf("%s: %s: --keys %s is not a volume mount", where, ct.Name, keys)
		return
	}
	if !m.ReadOnly {
		t.Errorf("%s: %s: mount the key volume read-only (only the fetcher writes it)", where, ct.Name)
	}
	for _, f := range fs {
		fm := mountOf(f.c, f.p.get("out"))
		if fm != nil && fm.Name == m.Name && fm.MountPath == f.p.get("out") {
			if f.index < 0 || f.index > i {
				t.Errorf("%s: the fetcher %s must be a native sidecar before %s", where, f.c.Name, ct.Name)
			}
			kinds := strings.Split(f.p.get("kinds"), ",")
			want := map[string][]string{"server": {"server", "domain"}, "client": {"client", "permit"}}[p.cmd]
			for _, k := range want {
				if !slices.Contains(kinds, k) {
					t.Errorf("%s: the fetcher %s for a %s should ask for --kinds %s", where, f.c.Name, p.cmd, strings.Join(want, ","))
				}
			}
			return
		}
	}
	t.Errorf("%s: %s: no keys fetch container writes volume %s", where, ct.Name, m.Name)
}

func checkDTA(t *testing.T, where string, spec *corev1.PodSpec, ct *corev1.Container, p *parsed) {
	t.Helper()
	if v := volumeOf(spec, mountOf(ct, p.get("dir"))); v == nil || v.PersistentVolumeClaim == nil {
		t.Errorf("%s: dta serve --dir %s should be on a PersistentVolumeClaim", where, p.get("dir"))
	}
	if !envSecret(ct, "MILAGRO_DTA_PASSPHRASE") && !p.has("passphrase-file") && !p.has("age-identity-file") {
		t.Errorf("%s: dta serve needs MILAGRO_DTA_PASSPHRASE from a Secret", where)
	}
	if p.has("insecure-http") {
		t.Errorf("%s: dta serve with --insecure-http", where)
	}
	if p.has("tls-cert") {
		for _, f := range []string{p.get("tls-cert"), p.get("tls-key")} {
			if v := volumeOf(spec, mountOf(ct, f)); v == nil || v.Secret == nil {
				t.Errorf("%s: %s should come from a Secret volume", where, f)
			}
		}
	} else if !p.has("acme-domain") {
		t.Errorf("%s: dta serve needs --tls-cert/--tls-key or ACME", where)
	}
	for _, pr := range []*corev1.Probe{ct.ReadinessProbe, ct.LivenessProbe} {
		if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Scheme != corev1.URISchemeHTTPS || pr.HTTPGet.Path != "/healthz" {
			t.Errorf("%s: D-TA probes should be HTTPS GET /healthz", where)
		}
	}
	if v := volumeOf(spec, mountOf(ct, p.get("policy"))); v == nil || v.ConfigMap == nil {
		t.Errorf("%s: the policy should come from a ConfigMap", where)
	} else if m := v.ConfigMap.DefaultMode; m != nil && *m&0o022 != 0 {
		t.Errorf("%s: the D-TA refuses a policy writable by group or others (defaultMode %04o)", where, *m)
	}
}

func selects(sel map[string]string, lbls map[string]string) bool {
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(lbls))
}

// checkServices: every Service and NetworkPolicy selects a workload of its
// namespace, and every Service port leads to a declared container port.
func checkServices(t *testing.T, objs []object, ws []workload) {
	t.Helper()
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Service:
			var w *workload
			for i := range ws {
				if ws[i].kind != "Job" && ws[i].namespace == v.Namespace && selects(v.Spec.Selector, ws[i].tmpl.Labels) {
					w = &ws[i]
				}
			}
			if w == nil {
				t.Errorf("%s: Service %s selects no workload", o.where, v.Name)
				continue
			}
			ports := map[int32]bool{}
			for _, c := range append(slices.Clone(w.tmpl.Spec.InitContainers), w.tmpl.Spec.Containers...) {
				for _, p := range c.Ports {
					ports[p.ContainerPort] = true
				}
			}
			for _, sp := range v.Spec.Ports {
				tp := sp.TargetPort.IntValue()
				if tp == 0 {
					t.Errorf("%s: Service %s port %d: use a numeric targetPort (named ports of native sidecars are not resolved by every version)", o.where, v.Name, sp.Port)
				} else if !ports[int32(tp)] {
					t.Errorf("%s: Service %s targets port %d, which no container of %s declares", o.where, v.Name, tp, w.name)
				}
			}
		case *networkingv1.NetworkPolicy:
			found := false
			for _, w := range ws {
				found = found || w.namespace == v.Namespace && selects(v.Spec.PodSelector.MatchLabels, w.tmpl.Labels)
			}
			if !found {
				t.Errorf("%s: NetworkPolicy %s selects no workload", o.where, v.Name)
			}
		}
	}
}

var kubectlCreate = regexp.MustCompile(`kubectl\b[^\n]*\bcreate (configmap|secret generic|secret tls) ([a-z0-9-]+)`)

// checkReferences: every ConfigMap, Secret and PVC a pod uses is defined in
// the manifests or created by a kubectl command in the README.
func checkReferences(t *testing.T, objs []object, ws []workload) {
	t.Helper()
	defined := map[string]bool{}
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.ConfigMap:
			defined["configmap/"+v.Name] = true
		case *corev1.Secret:
			defined["secret/"+v.Name] = true
		}
	}
	for _, m := range kubectlCreate.FindAllStringSubmatch(readFile(t, filepath.Join(examplesDir, "kubernetes", "README.md")), -1) {
		defined[strings.Fields(m[1])[0]+"/"+m[2]] = true
	}
	for _, w := range ws {
		spec := &w.tmpl.Spec
		need := map[string]bool{}
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil {
				need["configmap/"+v.ConfigMap.Name] = true
			}
			if v.Secret != nil {
				need["secret/"+v.Secret.SecretName] = true
			}
		}
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					need["secret/"+e.ValueFrom.SecretKeyRef.Name] = true
				}
			}
		}
		for n := range need {
			if !defined[n] {
				t.Errorf("%s: %s is neither in the manifests nor created in examples/kubernetes/README.md", w.where, n)
			}
		}
	}
}

var placeholder = regexp.MustCompile(`REPLACE-ME[A-Za-z0-9-]*`)

// checkPolicy parses each D-TA policy ConfigMap as the D-TA would (with
// the placeholders filled in) and requires every fetcher's identity and
// kinds to be granted by one of its requesters.
func checkPolicy(t *testing.T, objs []object, fetches []*parsed) {
	t.Helper()
	n := 0
	for _, o := range objs {
		cm, ok := o.obj.(*corev1.ConfigMap)
		if !ok || cm.Data["policy.yaml"] == "" {
			continue
		}
		n++
		i := 0
		text := placeholder.ReplaceAllStringFunc(cm.Data["policy.yaml"], func(string) string {
			i++
			return dta.HashToken(fmt.Sprint("placeholder-", i))
		})
		if i == 0 {
			t.Errorf("%s: the policy should carry REPLACE-ME placeholders, not token hashes", o.where)
		}
		pol, err := dta.ParsePolicy([]byte(text))
		if err != nil {
			t.Errorf("%s: the D-TA would refuse this policy: %v", o.where, err)
			continue
		}
		for _, f := range fetches {
			var kinds []keydir.Kind
			for _, k := range strings.Split(f.get("kinds"), ",") {
				kinds = append(kinds, keydir.Kind(k))
			}
			var errs []string
			ok := false
			for _, r := range pol.Requesters {
				err := r.Authorize(f.get("identity"), kinds)
				ok = ok || err == nil
				if err != nil {
					errs = append(errs, err.Error())
				}
			}
			if !ok {
				t.Errorf("%s: no requester may fetch %s for %s: %s", o.where, f.get("kinds"), f.get("identity"), strings.Join(errs, "; "))
			}
		}
	}
	if n == 0 {
		t.Error("no ConfigMap with a D-TA policy.yaml")
	}
}

// checkPeers: each client's upstream is a Service in front of a server
// sidecar, the server's identity matches the client's --verify-id, and the
// client's identity matches the server's --allow-id.
func checkPeers(t *testing.T, servers, clients, fetches []*parsed, serverPorts map[string]bool) {
	t.Helper()
	ids := map[string][]string{} // kind → identities fetched
	for _, f := range fetches {
		for _, k := range strings.Split(f.get("kinds"), ",") {
			ids[k] = append(ids[k], f.get("identity"))
		}
	}
	for _, cl := range clients {
		if !serverPorts[cl.get("target")] {
			t.Errorf("client --target %s is not host.namespace.svc:port of a Service in front of a server sidecar (%v)", cl.get("target"), serverPorts)
		}
		if err := pattern.Validate(cl.get("verify-id")); err != nil {
			t.Errorf("client --verify-id: %v", err)
		}
		if !slices.ContainsFunc(ids["server"], func(id string) bool { return pattern.Match(cl.get("verify-id"), id) }) {
			t.Errorf("client --verify-id %s matches no server identity fetched in the examples (%v)", cl.get("verify-id"), ids["server"])
		}
	}
	for _, s := range servers {
		allowed := false
		for _, a := range s.flags["allow-id"] {
			if err := pattern.Validate(a); err != nil {
				t.Errorf("server --allow-id: %v", err)
			}
			allowed = allowed || slices.ContainsFunc(ids["client"], func(id string) bool { return pattern.Match(a, id) })
		}
		if !allowed {
			t.Errorf("server --allow-id %v admits no client identity fetched in the examples (%v)", s.flags["allow-id"], ids["client"])
		}
	}
}
