package deploy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/cachesync/cachesync/config"
)

type k8sObject struct {
	file string
	node *yaml.Node
	raw  map[string]any
	meta struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name      string            `yaml:"name"`
			Namespace string            `yaml:"namespace"`
			Labels    map[string]string `yaml:"labels"`
		} `yaml:"metadata"`
	}
}

type securityContext struct {
	RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
	RunAsUser                *int64 `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
	SeccompProfile struct {
		Type string `yaml:"type"`
	} `yaml:"seccompProfile"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext securityContext `yaml:"securityContext"`
	VolumeMounts    []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type deployment struct {
	Spec struct {
		Replicas *int `yaml:"replicas"`
		Strategy struct {
			Type          string `yaml:"type"`
			RollingUpdate *struct {
				MaxSurge       any `yaml:"maxSurge"`
				MaxUnavailable any `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"strategy"`
		Selector labelSelector `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				TerminationGracePeriodSeconds *int            `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               securityContext `yaml:"securityContext"`
				Containers                    []container     `yaml:"containers"`
				Volumes                       []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name  string `yaml:"name"`
						Items []struct {
							Key  string `yaml:"key"`
							Path string `yaml:"path"`
						} `yaml:"items"`
					} `yaml:"configMap"`
					EmptyDir              any `yaml:"emptyDir"`
					PersistentVolumeClaim any `yaml:"persistentVolumeClaim"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type labelSelector struct {
	MatchLabels map[string]string `yaml:"matchLabels"`
}

// selects reports whether a non-empty selector matches labels.
func (s labelSelector) selects(labels map[string]string) bool {
	if len(s.MatchLabels) == 0 {
		return false
	}
	for k, v := range s.MatchLabels {
		if labels[k] != v {
			return false
		}
	}
	return true
}

type service struct {
	Spec struct {
		Type     string            `yaml:"type"`
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	Spec struct {
		Selector  labelSelector `yaml:"selector"`
		Endpoints []struct {
			Port     string `yaml:"port"`
			Path     string `yaml:"path"`
			Interval string `yaml:"interval"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

type podDisruptionBudget struct {
	Spec struct {
		MinAvailable               any           `yaml:"minAvailable"`
		UnhealthyPodEvictionPolicy string        `yaml:"unhealthyPodEvictionPolicy"`
		Selector                   labelSelector `yaml:"selector"`
	} `yaml:"spec"`
}

type networkPolicy struct {
	Spec struct {
		PodSelector labelSelector `yaml:"podSelector"`
		PolicyTypes []string      `yaml:"policyTypes"`
		Ingress     []struct {
			From  []map[string]any `yaml:"from"`
			Ports []struct {
				Port     any    `yaml:"port"`
				Protocol string `yaml:"protocol"`
			} `yaml:"ports"`
		} `yaml:"ingress"`
	} `yaml:"spec"`
}

// generatorOptions are kustomize's options of generated objects.
type generatorOptions struct {
	DisableNameSuffixHash bool `yaml:"disableNameSuffixHash"`
}

type kustomization struct {
	APIVersion         string   `yaml:"apiVersion"`
	Kind               string   `yaml:"kind"`
	Resources          []string `yaml:"resources"`
	ConfigMapGenerator []struct {
		Name    string           `yaml:"name"`
		Files   []string         `yaml:"files"`
		Options generatorOptions `yaml:"options"`
	} `yaml:"configMapGenerator"`
	GeneratorOptions generatorOptions `yaml:"generatorOptions"`
	Images           []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
		Digest  string `yaml:"digest"`
	} `yaml:"images"`
}

// generatedConfigMap returns the data of the ConfigMap kustomization.yaml
// generates under name, read from its files (key=path or path), and whether
// it keeps the hash suffix that makes a change of the data roll the pods.
func (k *kustomization) generatedConfigMap(t *testing.T, name string) (data map[string]string, hashed, ok bool) {
	t.Helper()
	for _, g := range k.ConfigMapGenerator {
		if g.Name != name {
			continue
		}
		data = map[string]string{}
		for _, f := range g.Files {
			key, path, found := strings.Cut(f, "=")
			if !found {
				key, path = filepath.Base(f), f
			}
			b, err := os.ReadFile(filepath.Join("kubernetes", path))
			if err != nil {
				t.Fatalf("kustomization.yaml: configMapGenerator %s: %v", name, err)
			}
			data[key] = string(b)
		}
		hashed := !g.Options.DisableNameSuffixHash && !k.GeneratorOptions.DisableNameSuffixHash
		return data, hashed, true
	}
	return nil, false, false
}

// imageTag returns the tag of an image reference ("" when it has none) and
// whether it is pinned by digest.
func imageTag(ref string) (tag string, digest bool) {
	if _, d, ok := strings.Cut(ref, "@"); ok {
		return d, true
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[i+1:], false
	}
	return "", false
}

var (
	podSpecKeys = []string{"activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "containers", "dnsConfig",
		"dnsPolicy", "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID",
		"hostUsers", "hostname", "imagePullSecrets", "initContainers", "nodeName", "nodeSelector", "os", "overhead",
		"preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
		"restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "securityContext", "serviceAccount",
		"serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace", "subdomain", "terminationGracePeriodSeconds",
		"tolerations", "topologySpreadConstraints", "volumes"}
	containerKeys = []string{"args", "command", "env", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe",
		"name", "ports", "readinessProbe", "resizePolicy", "resources", "restartPolicy", "securityContext", "startupProbe",
		"stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
		"volumeMounts", "workingDir"}
	podSecurityContextKeys = []string{"appArmorProfile", "fsGroup", "fsGroupChangePolicy", "runAsGroup", "runAsNonRoot",
		"runAsUser", "seLinuxChangePolicy", "seLinuxOptions", "seccompProfile", "supplementalGroups",
		"supplementalGroupsPolicy", "sysctls", "windowsOptions"}
	containerSecurityContextKeys = []string{"allowPrivilegeEscalation", "appArmorProfile", "capabilities", "privileged",
		"procMount", "readOnlyRootFilesystem", "runAsGroup", "runAsNonRoot", "runAsUser", "seLinuxOptions",
		"seccompProfile", "windowsOptions"}
	probeKeys = []string{"exec", "failureThreshold", "grpc", "httpGet", "initialDelaySeconds", "periodSeconds",
		"successThreshold", "tcpSocket", "terminationGracePeriodSeconds", "timeoutSeconds"}
	deploymentSpecKeys = []string{"minReadySeconds", "paused", "progressDeadlineSeconds", "replicas",
		"revisionHistoryLimit", "selector", "strategy", "template"}
)

// loadKubernetes returns every object of the manifests in kubernetes/ but
// kustomization.yaml, and the kustomization.
func loadKubernetes(t *testing.T) ([]*k8sObject, *kustomization, []string) {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.y*ml")
	if err != nil {
		t.Fatal(err)
	}
	var objs []*k8sObject
	var kust *kustomization
	var manifests []string
	for _, f := range files {
		docs := yamlDocs(t, f)
		if filepath.Base(f) == "kustomization.yaml" {
			kust = &kustomization{}
			decodeNode(t, f, docs[0], kust)
			continue
		}
		manifests = append(manifests, filepath.Base(f))
		for _, d := range docs {
			o := &k8sObject{file: f, node: d}
			decodeNode(t, f, d, &o.meta)
			decodeNode(t, f, d, &o.raw)
			objs = append(objs, o)
		}
	}
	if kust == nil {
		t.Fatal("kubernetes/kustomization.yaml is missing")
	}
	return objs, kust, manifests
}

// one returns the only object of a kind, decoded into v.
func one(t *testing.T, objs []*k8sObject, kind string, v any) *k8sObject {
	t.Helper()
	var found *k8sObject
	for _, o := range objs {
		if o.meta.Kind == kind {
			if found != nil {
				t.Fatalf("kubernetes: two %ss: %s and %s", kind, found.meta.Metadata.Name, o.meta.Metadata.Name)
			}
			found = o
		}
	}
	if found == nil {
		t.Fatalf("kubernetes: no %s", kind)
	}
	decodeNode(t, found.file, found.node, v)
	return found
}

// byteSize parses a Kubernetes quantity ("256Mi") or a GOMEMLIMIT ("220MiB").
func byteSize(t *testing.T, s string) int64 {
	t.Helper()
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30},
		{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("size %q: %v", s, err)
	}
	return n * mult
}

func testKubernetes(t *testing.T, c *cli, df *dockerfile) {
	objs, kust, manifests := loadKubernetes(t)

	// Namespace-agnostic objects with the basics set.
	for _, o := range objs {
		where := fmt.Sprintf("%s: %s %q", o.file, o.meta.Kind, o.meta.Metadata.Name)
		if o.meta.APIVersion == "" || o.meta.Kind == "" || o.meta.Metadata.Name == "" {
			t.Errorf("%s: apiVersion, kind and metadata.name must be set: %+v", o.file, o.meta)
		}
		if o.meta.Metadata.Namespace != "" {
			t.Errorf("%s: sets metadata.namespace; the manifests are namespace-agnostic", where)
		}
	}

	// The kustomization lists every manifest, each once, and nothing else.
	if kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || kust.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml: apiVersion %q kind %q", kust.APIVersion, kust.Kind)
	}
	kustRaw := map[string]any{}
	decodeNode(t, "kustomization.yaml", yamlDocs(t, "kubernetes/kustomization.yaml")[0], &kustRaw)
	checkKeys(t, "kustomization.yaml", kustRaw, "apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions",
		"images", "namespace", "labels", "commonLabels", "commonAnnotations", "namePrefix", "nameSuffix", "patches", "components")
	listed := slices.Clone(kust.Resources)
	slices.Sort(listed)
	if !slices.Equal(listed, manifests) {
		t.Errorf("kustomization.yaml resources %v, want the manifests of the directory %v", kust.Resources, manifests)
	}

	var dep deployment
	depObj := one(t, objs, "Deployment", &dep)
	var svc service
	svcObj := one(t, objs, "Service", &svc)
	var sm serviceMonitor
	smObj := one(t, objs, "ServiceMonitor", &sm)
	var pdb podDisruptionBudget
	pdbObj := one(t, objs, "PodDisruptionBudget", &pdb)
	var np networkPolicy
	npObj := one(t, objs, "NetworkPolicy", &np)
	for _, o := range objs {
		if o.meta.Kind == "ConfigMap" {
			t.Errorf("%s: a ConfigMap manifest; the rules come from kustomization.yaml's configMapGenerator, so that a change rolls the pods", o.file)
		}
	}
	var secret struct {
		StringData map[string]string `yaml:"stringData"`
		Data       map[string]string `yaml:"data"`
	}
	secretObj := one(t, objs, "Secret", &secret)

	// Unknown keys where a typo would silently drop a setting.
	spec := mapAt(depObj.raw, "spec")
	checkKeys(t, "Deployment spec", spec, deploymentSpecKeys...)
	podSpec := mapAt(mapAt(spec, "template"), "spec")
	checkKeys(t, "Deployment pod spec", podSpec, podSpecKeys...)
	checkKeys(t, "Deployment pod securityContext", mapAt(podSpec, "securityContext"), podSecurityContextKeys...)
	containers, _ := podSpec["containers"].([]any)
	for _, ct := range containers {
		m, _ := ct.(map[string]any)
		checkKeys(t, "Deployment container", m, containerKeys...)
		checkKeys(t, "Deployment container securityContext", mapAt(m, "securityContext"), containerSecurityContextKeys...)
		checkKeys(t, "Deployment livenessProbe", mapAt(m, "livenessProbe"), probeKeys...)
		checkKeys(t, "Deployment readinessProbe", mapAt(m, "readinessProbe"), probeKeys...)
	}

	// Active/passive: two replicas, never both replaced at once.
	ds := dep.Spec
	if ds.Replicas == nil || *ds.Replicas != 2 {
		got := "unset (1)"
		if ds.Replicas != nil {
			got = strconv.Itoa(*ds.Replicas)
		}
		t.Errorf("Deployment: replicas %s, want 2 (active and passive on the slot lock)", got)
	}
	switch ds.Strategy.Type {
	case "Recreate":
	case "RollingUpdate":
		ru := ds.Strategy.RollingUpdate
		if ru == nil || fmt.Sprint(ru.MaxSurge) != "0" || fmt.Sprint(ru.MaxUnavailable) != "1" {
			t.Errorf("Deployment: rollingUpdate %+v, want maxSurge 0 and maxUnavailable 1", ru)
		}
	default:
		t.Errorf("Deployment: strategy %q, want RollingUpdate (maxSurge 0, maxUnavailable 1) or Recreate", ds.Strategy.Type)
	}
	podLabels := ds.Template.Metadata.Labels
	if !ds.Selector.selects(podLabels) {
		t.Errorf("Deployment: selector %v does not select its pods %v", ds.Selector.MatchLabels, podLabels)
	}
	if !(labelSelector{MatchLabels: svc.Spec.Selector}).selects(podLabels) {
		t.Errorf("Service: selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
	}
	if !pdb.Spec.Selector.selects(podLabels) {
		t.Errorf("PodDisruptionBudget: selector %v does not select the pods %v", pdb.Spec.Selector.MatchLabels, podLabels)
	}
	if !sm.Spec.Selector.selects(svcObj.meta.Metadata.Labels) {
		t.Errorf("ServiceMonitor: selector %v does not select the Service's labels %v", sm.Spec.Selector.MatchLabels, svcObj.meta.Metadata.Labels)
	}
	if pdbObj.meta.APIVersion != "policy/v1" || fmt.Sprint(pdb.Spec.MinAvailable) != "1" {
		t.Errorf("PodDisruptionBudget: %s with minAvailable %v, want policy/v1 with 1", pdbObj.meta.APIVersion, pdb.Spec.MinAvailable)
	}
	// Pods that are not ready (both, while PostgreSQL is down) must not
	// block a drain; a Redis outage keeps them ready (/readyz).
	if pdb.Spec.UnhealthyPodEvictionPolicy != "AlwaysAllow" {
		t.Errorf("PodDisruptionBudget: unhealthyPodEvictionPolicy %q, want AlwaysAllow so that unready pods never block a drain", pdb.Spec.UnhealthyPodEvictionPolicy)
	}
	if !np.Spec.PodSelector.selects(podLabels) {
		t.Errorf("NetworkPolicy: podSelector %v does not select the pods %v", np.Spec.PodSelector.MatchLabels, podLabels)
	}

	// The container: a valid command line and environment.
	pod := ds.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("Deployment: %d containers, want 1", len(pod.Containers))
	}
	ct := pod.Containers[0]
	args := ct.Args
	if len(args) == 0 {
		args, _ = df.command(t, c)
	}
	flags := c.checkArgs(t, "Deployment: args", args)
	env := map[string]string{}
	var envNames []string
	for _, e := range ct.Env {
		env[e.Name] = e.Value
		envNames = append(envNames, e.Name)
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			ref := e.ValueFrom.SecretKeyRef
			_, inString := secret.StringData[ref.Key]
			_, inData := secret.Data[ref.Key]
			if ref.Name != secretObj.meta.Metadata.Name || !(inString || inData) {
				t.Errorf("Deployment: env %s refers to Secret %s key %s, which secret.yaml does not define", e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = "(secret)"
		}
	}
	c.checkEnv(t, "Deployment: env", "run", envNames)
	for _, k := range []string{"DATABASE_URL", "REDIS_URL"} {
		if env[k] != "(secret)" {
			t.Errorf("Deployment: env %s does not come from the Secret", k)
		}
		if _, ok := secret.StringData[k]; !ok {
			t.Errorf("Secret: no stringData %s", k)
		}
	}
	secretText, err := os.ReadFile(secretObj.file)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(secretText), "secret manager") {
		t.Errorf("%s: say that real values come from a secret manager", secretObj.file)
	}

	// Ports: --listen, the container port, the probes and the Service agree.
	_, port := listenPort(t, "Deployment: args", flags["--listen"])
	portNames := map[string]int{}
	for _, p := range ct.Ports {
		portNames[p.Name] = p.ContainerPort
	}
	if portNames["metrics"] != port {
		t.Errorf("Deployment: container port metrics is %d, but --listen is on %d", portNames["metrics"], port)
	}
	resolve := func(p any) int {
		if n, ok := p.(int); ok {
			return n
		}
		if n, ok := portNames[fmt.Sprint(p)]; ok {
			return n
		}
		return -1
	}
	for _, pr := range []struct {
		name, path string
		probe      *probe
	}{{"livenessProbe", "/healthz", ct.LivenessProbe}, {"readinessProbe", "/readyz", ct.ReadinessProbe}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("Deployment: no httpGet %s", pr.name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path || resolve(pr.probe.HTTPGet.Port) != port {
			t.Errorf("Deployment: %s on %s port %v, want %s on %d", pr.name, pr.probe.HTTPGet.Path, pr.probe.HTTPGet.Port, pr.path, port)
		}
	}
	if svc.Spec.Type != "" && svc.Spec.Type != "ClusterIP" {
		t.Errorf("Service: type %s, want ClusterIP", svc.Spec.Type)
	}
	metricsPort := false
	for _, p := range svc.Spec.Ports {
		if p.Name == "metrics" {
			metricsPort = true
			if p.Port != port || resolve(p.TargetPort) != port {
				t.Errorf("Service: port metrics %d -> %v, want %d -> the container's %d", p.Port, p.TargetPort, port, port)
			}
		}
	}
	if !metricsPort {
		t.Error("Service: no port named metrics")
	}

	// The listener: pprof off, and only Prometheus may reach the port.
	if _, on := flags["--pprof"]; on || env["CACHESYNC_PPROF"] != "" {
		t.Error("Deployment: --pprof is on; the manifests must not expose the profiles")
	}
	if npObj.meta.APIVersion != "networking.k8s.io/v1" || !slices.Contains(np.Spec.PolicyTypes, "Ingress") || len(np.Spec.Ingress) == 0 {
		t.Errorf("NetworkPolicy: %s %+v, want networking.k8s.io/v1 with Ingress rules", npObj.meta.APIVersion, np.Spec)
	}
	for i, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			t.Errorf("NetworkPolicy: ingress rule %d has no from: it lets everyone in", i)
		}
		if len(rule.Ports) == 0 {
			t.Errorf("NetworkPolicy: ingress rule %d has no ports: it opens every port", i)
		}
		for _, p := range rule.Ports {
			if resolve(p.Port) != port {
				t.Errorf("NetworkPolicy: ingress rule %d opens port %v, not the metrics port %d", i, p.Port, port)
			}
		}
	}

	// The image: pinned in the Deployment and in the kustomization, the same tag.
	tag, _ := imageTag(ct.Image)
	if tag == "" || tag == "latest" {
		t.Errorf("Deployment: image %q, want a pinned tag or digest, never latest", ct.Image)
	}
	name := strings.TrimSuffix(strings.TrimSuffix(ct.Image, "@"+tag), ":"+tag)
	pinned := false
	for _, im := range kust.Images {
		if im.Name != name {
			continue
		}
		pinned = true
		if im.Digest == "" && (im.NewTag == "" || im.NewTag == "latest") {
			t.Errorf("kustomization.yaml: image %s gets tag %q, want a pinned tag or digest", im.Name, im.NewTag)
		}
		if im.Digest == "" && im.NewTag != tag {
			t.Errorf("kustomization.yaml: image %s tag %q, but deployment.yaml says %q: keep them in step", im.Name, im.NewTag, tag)
		}
	}
	if !pinned {
		t.Errorf("kustomization.yaml: no images entry for %s (set it with kustomize edit set image)", name)
	}
	scraped := false
	for _, ep := range sm.Spec.Endpoints {
		scraped = scraped || (ep.Port == "metrics" && ep.Path == "/metrics" && ep.Interval == "15s")
	}
	if smObj.meta.APIVersion != "monitoring.coreos.com/v1" || !scraped {
		t.Errorf("ServiceMonitor: %s %+v, want monitoring.coreos.com/v1 scraping port metrics, path /metrics, every 15s", smObj.meta.APIVersion, sm.Spec.Endpoints)
	}

	// Stopping: room for the drain and the final confirmation.
	grace := 30
	if pod.TerminationGracePeriodSeconds != nil {
		grace = *pod.TerminationGracePeriodSeconds
	}
	if budget := c.stopBudget(t); time.Duration(grace)*time.Second <= budget {
		t.Errorf("Deployment: terminationGracePeriodSeconds %d, want more than %v (drain timeout and final confirmation)", grace, budget)
	}

	// Resources.
	limit, ok := ct.Resources.Limits["memory"]
	if !ok {
		t.Error("Deployment: no memory limit")
	} else if byteSize(t, limit) < minMemoryLimit {
		t.Errorf("Deployment: memory limit %s is below %d MiB", limit, minMemoryLimit>>20)
	}
	if req, ok := ct.Resources.Requests["memory"]; !ok || (limit != "" && byteSize(t, req) > byteSize(t, limit)) {
		t.Errorf("Deployment: memory request %q, want one at most the limit %q", req, limit)
	}
	if _, ok := ct.Resources.Requests["cpu"]; !ok {
		t.Error("Deployment: no CPU request")
	}
	if gml, ok := env["GOMEMLIMIT"]; ok && limit != "" && byteSize(t, gml) >= byteSize(t, limit) {
		t.Errorf("Deployment: GOMEMLIMIT %s is not below the memory limit %s", gml, limit)
	}

	// Security.
	psc, csc := pod.SecurityContext, ct.SecurityContext
	if !(csc.RunAsNonRoot != nil && *csc.RunAsNonRoot) && !(psc.RunAsNonRoot != nil && *psc.RunAsNonRoot) {
		t.Error("Deployment: runAsNonRoot is not true")
	}
	if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
		t.Error("Deployment: readOnlyRootFilesystem is not true")
	}
	if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
		t.Error("Deployment: allowPrivilegeEscalation is not false")
	}
	if !slices.Contains(csc.Capabilities.Drop, "ALL") {
		t.Errorf("Deployment: capabilities drop %v, want ALL", csc.Capabilities.Drop)
	}
	if csc.SeccompProfile.Type != "RuntimeDefault" && psc.SeccompProfile.Type != "RuntimeDefault" {
		t.Error("Deployment: no RuntimeDefault seccompProfile")
	}
	uid := psc.RunAsUser
	if csc.RunAsUser != nil {
		uid = csc.RunAsUser
	}
	if name, _, _ := strings.Cut(df.user(t), ":"); uid != nil && name != strconv.FormatInt(*uid, 10) {
		t.Errorf("Deployment: runAsUser %d, but the image's USER is %s", *uid, df.user(t))
	}

	// Volumes: the rules from the ConfigMap where --config points, the data
	// dir writable.
	mountAt := map[string]string{} // mount path -> volume name
	readOnly := map[string]bool{}
	for _, m := range ct.VolumeMounts {
		mountAt[m.MountPath], readOnly[m.MountPath] = m.Name, m.ReadOnly
	}
	configPath := flags["--config"]
	rulesVolume := mountAt[filepath.Dir(configPath)]
	dataDir := env["CACHESYNC_DATA_DIR"]
	dataVolume := mountAt[dataDir]
	if dataDir == "" || dataVolume == "" || readOnly[dataDir] {
		t.Errorf("Deployment: CACHESYNC_DATA_DIR %q is not a writable volume mount: the root filesystem is read-only", dataDir)
	}
	var rulesKey, rulesConfigMap string
	for _, v := range pod.Volumes {
		switch v.Name {
		case rulesVolume:
			if v.ConfigMap == nil {
				t.Errorf("Deployment: volume %s at %s is not a ConfigMap", v.Name, filepath.Dir(configPath))
				continue
			}
			rulesConfigMap = v.ConfigMap.Name
			rulesKey = filepath.Base(configPath)
			for _, it := range v.ConfigMap.Items {
				if it.Path == filepath.Base(configPath) {
					rulesKey = it.Key
				}
			}
			if !readOnly[filepath.Dir(configPath)] {
				t.Errorf("Deployment: the rules volume %s is not mounted readOnly", v.Name)
			}
		case dataVolume:
			if v.EmptyDir == nil && v.PersistentVolumeClaim == nil {
				t.Errorf("Deployment: the data volume %s is neither an emptyDir nor a PersistentVolumeClaim", v.Name)
			}
		}
	}
	if rulesKey == "" {
		t.Fatalf("Deployment: --config %s is not in a mounted ConfigMap", configPath)
	}

	// The generated ConfigMap's rules: parsed by cachesync's parser,
	// identical to ../rules.hcl, and a hash suffix so that a change rolls
	// the pods.
	data, hashed, ok := kust.generatedConfigMap(t, rulesConfigMap)
	if !ok {
		t.Fatalf("kustomization.yaml: no configMapGenerator %s, the ConfigMap the Deployment mounts", rulesConfigMap)
	}
	if !hashed {
		t.Errorf("kustomization.yaml: configMapGenerator %s disables the name suffix hash: a rules change would not roll the pods", rulesConfigMap)
	}
	rules, ok := data[rulesKey]
	if !ok {
		t.Fatalf("configMapGenerator %s: no key %s (the file --config reads)", rulesConfigMap, rulesKey)
	}
	p := config.NewParser()
	p.LookupEnv = func(string) (string, bool) { return "", false }
	cfg, diags := p.Parse([]byte(rules), "kubernetes/"+rulesKey)
	if diags.HasErrors() {
		t.Errorf("ConfigMap %s: %s does not parse:\n%s", rulesConfigMap, rulesKey, p.FormatDiagnostics(diags))
	} else if len(cfg.Rules) == 0 {
		t.Errorf("ConfigMap %s: %s has no rules", rulesConfigMap, rulesKey)
	}
	repoRules, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if rules != string(repoRules) {
		t.Errorf("kubernetes/%s (ConfigMap %s) differs from %s; copy it again: cp rules.hcl deploy/kubernetes/%s",
			rulesKey, rulesConfigMap, rulesFile, rulesKey)
	}
}

// testKustomizeBuild renders the kustomization with kubectl, which needs no
// cluster for it: every manifest and the generated ConfigMap, the pinned image,
// and a rules change that changes the pod template (so that apply rolls the
// pods).
func testKustomizeBuild(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not on PATH: `kubectl kustomize` was not run")
	}
	objs, kust, _ := loadKubernetes(t)
	rendered := kustomize(t, kubectl, "kubernetes")
	if want := len(objs) + len(kust.ConfigMapGenerator); len(rendered) != want {
		t.Errorf("kubectl kustomize rendered %d objects, want the %d of the manifests and generators", len(rendered), want)
	}
	image, rulesConfigMap := renderedPod(t, rendered)
	if tag, _ := imageTag(image); tag == "" || tag == "latest" {
		t.Errorf("kubectl kustomize: the Deployment's image is %q, want a pinned tag", image)
	}
	if !strings.HasPrefix(rulesConfigMap, "cachesync-rules-") {
		t.Errorf("kubectl kustomize: the Deployment mounts ConfigMap %q, want the generated cachesync-rules-<hash>", rulesConfigMap)
	}

	// The same kustomization with one more line of rules.
	dir := t.TempDir()
	for _, f := range append(kust.Resources, "kustomization.yaml", "rules.hcl") {
		b, err := os.ReadFile(filepath.Join("kubernetes", f))
		if err != nil {
			t.Fatal(err)
		}
		if f == "rules.hcl" {
			b = append(b, "# changed\n"...)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, changed := renderedPod(t, kustomize(t, kubectl, dir))
	if changed == rulesConfigMap {
		t.Errorf("kubectl kustomize: a rules change leaves the Deployment on ConfigMap %s: the pods would keep the old rules", changed)
	}
}

// kustomize renders a kustomization directory into its objects.
func kustomize(t *testing.T, kubectl, dir string) []map[string]any {
	t.Helper()
	out, err := exec.Command(kubectl, "kustomize", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, out)
	}
	var objs []map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var o map[string]any
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kubectl kustomize output: %v", err)
		}
		objs = append(objs, o)
	}
	return objs
}

// renderedPod returns the image of the rendered Deployment's container and
// the ConfigMap its rules volume mounts.
func renderedPod(t *testing.T, objs []map[string]any) (image, rulesConfigMap string) {
	t.Helper()
	for _, o := range objs {
		if o["kind"] != "Deployment" {
			continue
		}
		var dep deployment
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, &dep); err != nil {
			t.Fatal(err)
		}
		pod := dep.Spec.Template.Spec
		if len(pod.Containers) == 1 {
			image = pod.Containers[0].Image
		}
		for _, v := range pod.Volumes {
			if v.Name == "rules" && v.ConfigMap != nil {
				rulesConfigMap = v.ConfigMap.Name
			}
		}
		return image, rulesConfigMap
	}
	t.Fatal("kubectl kustomize rendered no Deployment")
	return "", ""
}
