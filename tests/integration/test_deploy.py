"""Deployment checks (no cluster, no Helm, no image build here):

- `kubectl kustomize deploy/k8s` renders, with the server at the URL the Dynamo operator
  injects (model-express-server.model-express, port 8080 -> container 8001);
- every rendered object, every plain manifest (the Jobs and optional Redis included) and
  every object of the Helm chart rendered by helm_lite deserializes into the official
  Kubernetes Python client's models with no unknown field (the client drops unknown keys
  silently, so each dict is walked against the models' attribute_map);
- the DynamoGraphDeployment examples (a CRD) parse and have the fields the guide uses;
- the chart's templates reference only values that exist and balance their actions, and
  the chart refuses replicaCount > 1 without Redis;
- the env and flags the plain and Helm Deployments give mx-server pass its own
  --validate-config (the built mx-server, beside MX_BIN);
- the Dockerfile builds the Makefile's CMake targets with its configure, and runs as non-root.
"""

import copy
import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import yaml
import kubernetes.client as k8s
from kubernetes.client import ApiClient

import helm_lite

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S_DIR = os.path.join(ROOT, "deploy", "k8s")
CHART_DIR = os.path.join(ROOT, "deploy", "helm", "mx")
MX_URL_HOST = "model-express-server.model-express.svc.cluster.local"

# Fields newer than Debian's client (python3-kubernetes 22.6 = Kubernetes 1.22): the gRPC
# probe is Kubernetes >= 1.24 (core/v1 GRPCAction: port int32 required, service string).
EXTRA_FIELDS = {"V1Probe": {"grpc": "GRPCAction"}}
EXTRA_MODELS = {"GRPCAction": ({"port": "int", "service": "str"}, {"port"})}

PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def model_for(obj):
    api_version, kind = obj["apiVersion"], obj["kind"]
    version = api_version.split("/")[-1]
    name = version[0].upper() + version[1:] + kind
    if not hasattr(k8s, name):
        raise AssertionError("no client model for %s %s" % (api_version, kind))
    return name


def unknown_fields(data, type_name, path="$"):
    """Every key of data (recursively) that the model type_name does not declare, and every
    value of the wrong primitive type."""
    errors = []
    if data is None:
        return errors
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        if not isinstance(data, list):
            return ["%s: expected a list, got %r" % (path, type(data).__name__)]
        for i, item in enumerate(data):
            errors += unknown_fields(item, m.group(1), "%s[%d]" % (path, i))
        return errors
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        if not isinstance(data, dict):
            return ["%s: expected a map" % path]
        for k, v in data.items():
            errors += unknown_fields(v, m.group(1), "%s.%s" % (path, k))
        return errors
    if type_name in PRIMITIVES:
        if not isinstance(data, PRIMITIVES[type_name]) or (
                type_name == "int" and isinstance(data, bool)):
            # Quantities and label values are often written unquoted; a str field given a
            # number is what the API server would refuse, so it counts.
            errors.append("%s: %r is not %s" % (path, data, type_name))
        return errors
    if type_name in ("object", "datetime", "date"):
        return errors
    if type_name in EXTRA_MODELS:
        fields, required = EXTRA_MODELS[type_name]
        if not isinstance(data, dict):
            return ["%s: expected an object" % path]
        for k, v in data.items():
            if k not in fields:
                errors.append("%s.%s: unknown field of %s" % (path, k, type_name))
            else:
                errors += unknown_fields(v, fields[k], "%s.%s" % (path, k))
        errors += ["%s.%s: required" % (path, k) for k in required if k not in data]
        return errors
    cls = getattr(k8s, type_name, None)
    if cls is None:
        return ["%s: unknown model %s" % (path, type_name)]
    if not isinstance(data, dict):
        return ["%s: expected an object for %s" % (path, type_name)]
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    extra = EXTRA_FIELDS.get(type_name, {})
    for key, value in data.items():
        if key in by_json:
            errors += unknown_fields(value, cls.openapi_types[by_json[key]],
                                     "%s.%s" % (path, key))
        elif key in extra:
            errors += unknown_fields(value, extra[key], "%s.%s" % (path, key))
        else:
            errors.append("%s.%s: unknown field of %s" % (path, key, type_name))
    return errors


def deserialize(obj):
    """The client's own deserializer (required fields, types); returns the model."""
    return ApiClient()._ApiClient__deserialize(copy.deepcopy(obj), model_for(obj))


def check_object(test, obj, where):
    name = model_for(obj)
    errors = unknown_fields(obj, name)
    test.assertEqual(errors, [], "%s (%s %s)" % (where, obj.get("kind"),
                                                 obj.get("metadata", {}).get("name")))
    model = deserialize(obj)
    test.assertIsInstance(model, getattr(k8s, name))
    return model


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def plain_manifests():
    paths = []
    for path in sorted(glob.glob(os.path.join(K8S_DIR, "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, K8S_DIR)
        if rel == "kustomization.yaml" or rel.startswith("examples" + os.sep):
            continue
        paths.append(path)
    return paths


def pod_spec(obj):
    """The pod spec of a Deployment or a Job."""
    return obj["spec"]["template"]["spec"]


class SchemaCheckerTest(unittest.TestCase):
    """The checker itself refuses what it must, so a green run means something."""

    def test_unknown_field_is_reported(self):
        dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
               "spec": {"selector": {"matchLabels": {"a": "b"}},
                        "template": {"spec": {"containers": [
                            {"name": "c", "image": "i", "imagePullPolicyy": "Always",
                             "livenessProbe": {"grpc": {"port": 1, "srvice": "x"}}}]}}}}
        errors = unknown_fields(dep, "V1Deployment")
        self.assertEqual(len(errors), 2, errors)
        self.assertIn("imagePullPolicyy", errors[0])
        self.assertIn("srvice", errors[1])

    def test_wrong_type_is_reported(self):
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
               "spec": {"ports": [{"port": "8080"}]}}
        self.assertEqual(len(unknown_fields(svc, "V1Service")), 1)

    def test_helm_checks_catch_breakage(self):
        values = {"a": {"b": 1}}
        self.assertEqual(helm_lite.missing_value_refs("{{ .Values.a.c }}", values),
                         [".Values.a.c"])
        self.assertEqual(helm_lite.missing_value_refs("{{ .Values.a.b }}", values), [])
        self.assertTrue(helm_lite.check_balance("{{ if .Values.a }}x"))
        self.assertTrue(helm_lite.check_balance("{{ end }}"))
        self.assertEqual(helm_lite.check_balance(
            "{{- if .X }}{{ range .Y }}{{ end }}{{ else }}{{ end -}}"), [])


class KustomizeTest(unittest.TestCase):
    def test_kustomize_renders_and_every_object_is_valid(self):
        kubectl = shutil.which("kubectl")
        self.assertIsNotNone(kubectl, "kubectl missing: make deps installs kubernetes-client")
        out = subprocess.run([kubectl, "kustomize", K8S_DIR], capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        objs = [d for d in yaml.safe_load_all(out.stdout) if d]
        kinds = sorted(o["kind"] for o in objs)
        self.assertEqual(kinds, ["Deployment", "Namespace", "PersistentVolumeClaim", "Service"])
        for obj in objs:
            check_object(self, obj, "kubectl kustomize")
            if obj["kind"] != "Namespace":
                self.assertEqual(obj["metadata"].get("namespace"), "model-express")
        svc = next(o for o in objs if o["kind"] == "Service")
        self.assertEqual(svc["metadata"]["name"], "model-express-server")
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        self.assertEqual(ports["grpc"]["port"], 8080)
        dep = next(o for o in objs if o["kind"] == "Deployment")
        container = pod_spec(dep)["containers"][0]
        cports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(cports["grpc"], 8001)
        self.assertEqual(cports[ports["mirror"]["targetPort"]], 8002)
        self.assertEqual(cports[ports["metrics"]["targetPort"]], 9401)
        for key, value in svc["spec"]["selector"].items():
            self.assertEqual(dep["spec"]["template"]["metadata"]["labels"].get(key), value)
        self.assertEqual(container["livenessProbe"]["grpc"]["port"], 8001)
        self.assertTrue(pod_spec(dep)["securityContext"]["runAsNonRoot"])


class PlainManifestTest(unittest.TestCase):
    def test_every_plain_manifest_is_valid(self):
        paths = plain_manifests()
        self.assertGreaterEqual(len(paths), 7, paths)
        for path in paths:
            for obj in load_all(path):
                check_object(self, obj, os.path.relpath(path, ROOT))

    def test_download_job(self):
        (job,) = load_all(os.path.join(K8S_DIR, "option1", "model-download-job.yaml"))
        check_object(self, job, "download job")
        self.assertGreater(job["spec"]["backoffLimit"], 0)
        spec = pod_spec(job)
        c = spec["containers"][0]
        script = " ".join(c.get("command", []) + c.get("args", []))
        self.assertRegex(script, r'mx download "\$MODEL_NAME" --revision "\$MODEL_REVISION"')
        env = {e["name"]: e.get("value") for e in c["env"]}
        self.assertIn("MODEL_NAME", env)
        self.assertIn("MODEL_REVISION", env)
        mount = c["volumeMounts"][0]["mountPath"]
        self.assertTrue(env["HF_HUB_CACHE"].startswith(mount + "/"))
        self.assertEqual(c["envFrom"][0]["secretRef"]["name"], "hf-token-secret")
        self.assertEqual(spec["volumes"][0]["persistentVolumeClaim"]["claimName"], "model-cache")

    def test_path_job(self):
        (job,) = load_all(os.path.join(K8S_DIR, "option1", "model-path-job.yaml"))
        c = pod_spec(job)["containers"][0]
        script = " ".join(c.get("command", []) + c.get("args", []))
        self.assertIn("mx cache path", script)
        self.assertIn("pvcModelPath", script)


class DgdExampleTest(unittest.TestCase):
    def examples(self):
        paths = sorted(glob.glob(os.path.join(K8S_DIR, "examples", "*.yaml")))
        self.assertGreaterEqual(len(paths), 2)
        return {os.path.basename(p): load_all(p) for p in paths}

    def test_examples_parse(self):
        for name, docs in self.examples().items():
            for d in docs:
                self.assertEqual(d["apiVersion"], "nvidia.com/v1alpha1", name)
                self.assertEqual(d["kind"], "DynamoGraphDeployment", name)
                self.assertTrue(d["metadata"]["name"], name)
                self.assertIsInstance(d["spec"]["services"], dict, name)
                pvcs = {p["name"] for p in d["spec"].get("pvcs", [])}
                mounts = [m for s in d["spec"]["services"].values()
                          for m in s.get("volumeMounts", [])]
                for m in mounts:
                    self.assertIn(m["name"], pvcs, name)
                    self.assertTrue(m["mountPoint"].startswith("/"), name)
                self.assertIn("compilation-cache", {m["name"] for m in mounts}, name)

    def test_no_shared_storage_worker(self):
        (d,) = self.examples()["dgd-no-shared-storage.yaml"]
        envs = {e["name"]: e["value"] for s in d["spec"]["services"].values()
                for e in s.get("envs", [])}
        self.assertEqual(envs["MODEL_EXPRESS_NO_SHARED_STORAGE"], "1")
        self.assertEqual(envs["MODEL_EXPRESS_URL"], "http://%s:8080" % MX_URL_HOST)


class HelmChartTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(CHART_DIR, "values.yaml")) as f:
            cls.values = yaml.safe_load(f)
        with open(os.path.join(CHART_DIR, "Chart.yaml")) as f:
            cls.chart = yaml.safe_load(f)
        cls.templates = {}
        for path in sorted(glob.glob(os.path.join(CHART_DIR, "templates", "*"))):
            with open(path) as f:
                cls.templates[os.path.basename(path)] = f.read()

    def test_values_references_exist(self):
        self.assertIn("deployment.yaml", self.templates)
        for name, text in self.templates.items():
            self.assertEqual(helm_lite.missing_value_refs(text, self.values), [], name)

    def test_actions_balanced(self):
        for name, text in self.templates.items():
            self.assertEqual(helm_lite.check_balance(text), [], name)

    def render(self, **overrides):
        values = copy.deepcopy(self.values)
        for dotted, value in overrides.items():
            node = values
            keys = dotted.split("__")
            for k in keys[:-1]:
                node = node[k]
            self.assertIn(keys[-1], node, dotted)
            node[keys[-1]] = value
        r = helm_lite.Renderer(self.templates, values, chart=self.chart)
        objs = []
        for name in sorted(self.templates):
            if name.endswith(".yaml"):
                objs += [d for d in yaml.safe_load_all(r.render(name)) if d]
        return objs

    def check_rendered(self, objs):
        for obj in objs:
            if obj["apiVersion"] == "monitoring.coreos.com/v1":
                self.assertEqual(obj["kind"], "ServiceMonitor")
                continue
            check_object(self, obj, "helm template")

    def test_default_render(self):
        objs = self.render()
        self.check_rendered(objs)
        kinds = sorted(o["kind"] for o in objs)
        self.assertEqual(kinds, ["Deployment", "PersistentVolumeClaim", "Service",
                                 "ServiceAccount"])
        svc = next(o for o in objs if o["kind"] == "Service")
        self.assertEqual(svc["metadata"]["name"] + ".model-express.svc.cluster.local",
                         MX_URL_HOST)
        self.assertEqual(svc["spec"]["ports"][0]["port"], 8080)
        dep = next(o for o in objs if o["kind"] == "Deployment")
        c = pod_spec(dep)["containers"][0]
        self.assertEqual({p["name"]: p["containerPort"] for p in c["ports"]},
                         {"grpc": 8001, "mirror": 8002, "metrics": 9401})
        self.assertEqual(c["readinessProbe"]["grpc"]["port"], 8001)
        env = {e["name"]: e.get("value") for e in c["env"]}
        self.assertEqual(env["MX_METADATA_BACKEND"], "embedded")
        self.assertNotIn("args", c)

    def test_full_render(self):
        objs = self.render(replicaCount=3, redis__enabled=True, tls__enabled=True,
                           tls__secretName="mx-tls", auth__enabled=True,
                           auth__secretName="mx-token", service__mirrorPort=0,
                           hfToken__secretName="hf-token-secret",
                           serviceMonitor__enabled=True,
                           persistence__accessModes=["ReadWriteMany"],
                           serverArgs={"max-bytes": "500GiB"})
        self.check_rendered(objs)
        kinds = sorted(o["kind"] for o in objs)
        self.assertEqual(kinds.count("Deployment"), 2)
        self.assertIn("ServiceMonitor", kinds)
        dep = next(o for o in objs if o["kind"] == "Deployment"
                   and o["metadata"]["name"] == "model-express-server")
        self.assertEqual(dep["spec"]["replicas"], 3)
        self.assertNotIn("strategy", dep["spec"])
        c = pod_spec(dep)["containers"][0]
        self.assertIn("--tls-cert=/etc/mx/tls/tls.crt", c["args"])
        self.assertIn("--auth-token-file=/etc/mx/auth/token", c["args"])
        self.assertIn("--max-bytes=500GiB", c["args"])
        self.assertIn("tcpSocket", c["livenessProbe"])  # gRPC probes cannot speak TLS
        env = {e["name"]: e for e in c["env"]}
        self.assertEqual(env["MX_METADATA_BACKEND"]["value"], "redis")
        self.assertEqual(env["REDIS_URL"]["value"], "redis://model-express-server-redis:6379")
        self.assertEqual(env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"],
                         "hf-token-secret")
        svc = next(o for o in objs if o["kind"] == "Service"
                   and o["metadata"]["name"] == "model-express-server")
        self.assertNotIn("mirror", [p["name"] for p in svc["spec"]["ports"]])
        # The server's Service must not select the Redis pod.
        redis = next(o for o in objs if o["kind"] == "Deployment" and o is not dep)
        labels = redis["spec"]["template"]["metadata"]["labels"]
        self.assertFalse(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()))

    def test_external_redis_allows_replicas(self):
        objs = self.render(replicaCount=2, redis__url="redis://redis.example:6379/0")
        self.check_rendered(objs)
        self.assertNotIn("Deployment", [o["kind"] for o in objs
                                        if o["metadata"]["name"].endswith("-redis")])

    def test_replicas_without_redis_refused(self):
        with self.assertRaisesRegex(helm_lite.TemplateFail, "redis"):
            self.render(replicaCount=2)

    def test_tls_token_mirror_refused(self):
        with self.assertRaisesRegex(helm_lite.TemplateFail, "mirror"):
            self.render(tls__enabled=True, tls__secretName="t", auth__enabled=True,
                        auth__secretName="a")


def mx_server_bin():
    """mx-server beside the mx that ctest names in MX_BIN (build/src/cli/mx)."""
    mx = os.environ.get("MX_BIN")
    if not mx:
        return None
    path = os.path.join(os.path.dirname(mx), "..", "server", "mx-server")
    return path if os.access(path, os.X_OK) else None


class ServerAcceptsManifestsTest(unittest.TestCase):
    """The env and flags the manifests give mx-server pass its own --validate-config."""

    def validate(self, container, expect):
        server = mx_server_bin()
        if server is None:
            self.skipTest("mx-server not built (run through ctest)")
        with tempfile.TemporaryDirectory() as tmp:
            def local(v):
                return v.replace("/cache/huggingface", tmp + "/cache").replace(
                    "/etc/mx/", tmp + "/etc/")
            env = {"PATH": "/usr/bin:/bin", "HOME": tmp}
            for e in container.get("env", []):
                if "value" in e:
                    env[e["name"]] = local(e["value"])
            os.makedirs(os.path.join(tmp, "etc", "auth"))
            with open(os.path.join(tmp, "etc", "auth", "token"), "w") as f:
                f.write("secret-token\n")
            args = [local(a) for a in container.get("args", [])]
            out = subprocess.run([server, "--validate-config"] + args, env=env,
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
            for text in expect:
                self.assertIn(text, out.stdout)

    def test_plain_deployment(self):
        (dep,) = load_all(os.path.join(K8S_DIR, "server-deployment.yaml"))
        self.validate(pod_spec(dep)["containers"][0],
                      ["grpc 0.0.0.0:8001", "mirror :8002", "metrics :9401",
                       "registry embedded"])

    def test_helm_deployment(self):
        chart = HelmChartTest("test_default_render")
        chart.setUpClass()
        objs = chart.render(replicaCount=2, redis__enabled=True, auth__enabled=True,
                            auth__secretName="t", serverArgs={"max-bytes": "500GiB"})
        dep = next(o for o in objs if o["kind"] == "Deployment"
                   and o["metadata"]["name"] == "model-express-server")
        self.validate(pod_spec(dep)["containers"][0],
                      ["grpc 0.0.0.0:8001", "bearer token", "mirror :8002",
                       "registry redis model-express-server-redis:6379"])


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(ROOT, "Dockerfile")) as f:
            text = f.read()
        cls.text = re.sub(r"\\\n", " ", text)  # join continued lines
        with open(os.path.join(ROOT, "Makefile")) as f:
            cls.makefile = f.read()
        stages = re.split(r"^FROM\s+", cls.text, flags=re.M)[1:]
        cls.stages = stages

    def test_two_debian12_stages(self):
        self.assertEqual(len(self.stages), 2)
        for s in self.stages:
            self.assertTrue(s.startswith("debian:bookworm"), s.splitlines()[0])

    def test_build_stage_runs_makefile_cmake(self):
        build = self.stages[0]
        make_vars = dict(re.findall(r"^(\w+)\s*\?=\s*(.*)$", self.makefile, re.M))
        m = re.search(r"^\t(cmake -S .*)$", self.makefile, re.M)
        self.assertIsNotNone(m, "Makefile configure line")
        configure = m.group(1).replace("$(BUILD_DIR)", make_vars["BUILD_DIR"])
        configure = configure.replace("$(CMAKE_FLAGS)", make_vars["CMAKE_FLAGS"])
        self.assertIn(configure, build)
        targets = re.search(r"cmake --build %s .*--target ((?:[\w-]+ ?)+)"
                            % re.escape(make_vars["BUILD_DIR"]), build)
        self.assertIsNotNone(targets, "cmake --build --target in the build stage")
        built = set(targets.group(1).split())
        self.assertEqual(built, {"mx", "mx-server"})
        for target in built:  # each is a real executable target of the CMake build
            found = False
            for cml in glob.glob(os.path.join(ROOT, "src", "*", "CMakeLists.txt")):
                with open(cml) as f:
                    if re.search(r"add_executable\(%s\s" % re.escape(target), f.read()):
                        found = True
            self.assertTrue(found, target)
        # The binary `make run` starts is the one the image ships.
        run_bin = re.search(r"\$\(BUILD_DIR\)/(src/server/mx-server)", self.makefile).group(1)
        self.assertIn("COPY --from=build /src/%s/%s" % (make_vars["BUILD_DIR"], run_bin),
                      self.stages[1])
        # Every library of scripts/install-deps.sh is installed in the build stage.
        with open(os.path.join(ROOT, "scripts", "install-deps.sh")) as f:
            deps = f.read()
        libs = re.search(r"# libraries\n(.*?)\n\s*#", deps, re.S).group(1).split()
        for lib in libs:
            self.assertRegex(build, r"\s%s\s" % re.escape(lib))

    def test_final_stage_non_root_and_runtime_only(self):
        final = self.stages[1]
        users = re.findall(r"^USER\s+(\S+)", final, re.M)
        self.assertTrue(users, "no USER in the final stage")
        self.assertNotIn(users[-1].split(":")[0], ("root", "0"))
        self.assertRegex(final, r'ENTRYPOINT \["mx-server"\]')
        for dev in ("-dev ", "build-essential", "cmake", "g++"):
            self.assertNotIn(dev, final)


if __name__ == "__main__":
    unittest.main()
