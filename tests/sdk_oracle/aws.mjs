// Test oracle: the AWS SDK for JavaScript's default credential chain
// (fromNodeProviderChain) run in the environment it is given. Prints one JSON line:
//   {"ok":true,"link":"...","features":{...},"accessKeyId":"...","sessionToken":"...","expiration":"..."}
// or {"ok":false,"error":"..."}. The credentials are the test stand-ins' (never real ones):
// it refuses to run unless every endpoint it could reach is overridden to 127.0.0.0/8.
import { fromNodeProviderChain } from "@aws-sdk/credential-providers";

const env = process.env;
const local = (u) => /^https?:\/\/(127\.\d+\.\d+\.\d+|localhost)(:\d+)?(\/|$)/.test(u || "");
const guards = [
  ["AWS_ENDPOINT_URL_STS", local(env.AWS_ENDPOINT_URL_STS)],
  ["AWS_EC2_METADATA_SERVICE_ENDPOINT or AWS_EC2_METADATA_DISABLED",
   local(env.AWS_EC2_METADATA_SERVICE_ENDPOINT) || (env.AWS_EC2_METADATA_DISABLED || "false") !== "false"],
  ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI unset", !env.AWS_CONTAINER_CREDENTIALS_RELATIVE_URI],
  ["AWS_CONTAINER_CREDENTIALS_FULL_URI local", !env.AWS_CONTAINER_CREDENTIALS_FULL_URI ||
   local(env.AWS_CONTAINER_CREDENTIALS_FULL_URI)],
];
for (const [what, ok] of guards) {
  if (!ok) {
    console.log(JSON.stringify({ ok: false, error: `oracle guard: ${what} must point at 127.0.0.0/8` }));
    process.exit(2);
  }
}

// Which link won, from the credential's feature marks ($source, set by each provider).
function linkOf(features) {
  if (features.CREDENTIALS_PROFILE_STS_WEB_ID_TOKEN) return "shared files: web identity";
  if (features.CREDENTIALS_ENV_VARS_STS_WEB_ID_TOKEN) return "web identity";
  if (features.CREDENTIALS_PROFILE) return "shared files";
  if (features.CREDENTIALS_ENV_VARS) return "environment";
  if (features.CREDENTIALS_HTTP) return "container";
  return "instance metadata";  // fromInstanceMetadata sets no mark
}

try {
  const creds = await fromNodeProviderChain()();
  const features = creds.$source || {};
  console.log(JSON.stringify({
    ok: true,
    link: linkOf(features),
    features,
    accessKeyId: creds.accessKeyId,
    sessionToken: creds.sessionToken ?? null,
    expiration: creds.expiration ? creds.expiration.toISOString() : null,
  }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e).slice(0, 400) }));
}
