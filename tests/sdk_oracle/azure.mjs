// Test-only oracle: @azure/identity's DefaultAzureCredential, run in the environment it is
// given, prints one JSON line: which credential of the chain won and the token it got, e.g.
//   {"ok":true,"credential":"WorkloadIdentityCredential","source":null,"tokens":["eyJ..."]}
//   {"ok":false,"error":"..."}
// tests/integration/test_credentials_azure.py compares it with mx's choice. MX_ORACLE_CALLS=2
// asks for the token twice (a short-lived first token must be renewed).
//
// It must never reach a real cloud: every connection to a host outside 127.0.0.0/8 (or
// localhost) is refused before it is made, and the test points every endpoint at stand-ins.
// Instance discovery (a GET to login.microsoftonline.com) is disabled by the SDK option
// made for private authority hosts.
import net from "node:net";
import { AzureLogger, setLogLevel } from "@azure/logger";
import { DefaultAzureCredential } from "@azure/identity";

const originalConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const first = args[0];
  let host;
  if (Array.isArray(first)) host = first[0]?.host;
  else if (first && typeof first === "object") host = first.path ? "unix" : first.host;
  else if (typeof args[1] === "string") host = args[1];
  else host = "localhost";
  const allowed =
    host === undefined || host === "unix" || host === "localhost" || /^127\./.test(host) ||
    host === "::1";
  if (!allowed) {
    const err = new Error(`oracle: refusing a connection to ${host} (outside 127.0.0.0/8)`);
    err.code = "ECONNREFUSED";
    process.nextTick(() => this.destroy(err));
    return this;
  }
  return originalConnect.apply(this, args);
};

const lines = [];
setLogLevel("info");
AzureLogger.log = (...args) => lines.push(args.map(String).join(" "));

const scope = "https://storage.azure.com/.default";
const calls = Number(process.env.MX_ORACLE_CALLS || "1");

function winner() {
  for (const line of lines) {
    const m = /Result for (\w+): SUCCESS/i.exec(line) || /Result for (\w+):/.exec(line);
    if (m) return m[1];
  }
  return null;
}

function managedIdentitySource() {
  for (const line of lines) {
    const m = /MSAL Identity source: (\w+)/.exec(line);
    if (m) return m[1];
  }
  return null;
}

try {
  const credential = new DefaultAzureCredential({ disableInstanceDiscovery: true });
  const tokens = [];
  for (let i = 0; i < calls; i++) {
    const t = await credential.getToken(scope);
    tokens.push(t.token);
  }
  console.log(
    JSON.stringify({
      ok: true,
      credential: winner(),
      source: managedIdentitySource(),
      tokens,
    }),
  );
} catch (err) {
  console.log(
    JSON.stringify({
      ok: false,
      error: String(err?.message ?? err).slice(0, 2000),
      name: err?.name ?? null,
    }),
  );
}
process.exit(0);
