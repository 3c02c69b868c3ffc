// Test-only oracle: google-auth-library's default chain (Application Default Credentials)
// in the environment it is given. Prints one JSON line:
//   {"client": "<class of the client ADC chose>", "tokens": ["<access token>", ...],
//    "dns": ["<host names it tried to resolve>"], "refused": ["<origins it was kept from>"]}
// or {"error": "...", ...} (exit 1).
//
// Isolation (it must never reach Google): every request the library's clients make goes
// through a fetch that sends https://oauth2.googleapis.com (the fixed endpoint the
// library uses for service-account and authorized-user grants) to $MX_ORACLE_OAUTH2_URL
// and refuses any other origin outside 127.0.0.0/8; DNS lookups of anything but localhost
// fail (and are reported, so a test can assert metadata.google.internal was not tried).
// The metadata client (gcp-metadata) goes to $GCE_METADATA_HOST, which the tests set.
//
// Env: MX_ORACLE_SCOPE (default devstorage.read_only), MX_ORACLE_CALLS (getAccessToken
// calls, default 1; between calls the cached token is used or refreshed as the library
// decides), MX_ORACLE_SLEEP_MS (pause between calls).
import dns from 'node:dns';
import { Gaxios } from 'gaxios';
import { GoogleAuth } from 'google-auth-library';
import fetch from 'node-fetch';

const dnsTried = [];
const refused = [];
const realLookup = dns.lookup;
dns.lookup = function (hostname, options, callback) {
  if (typeof options === 'function') {
    callback = options;
    options = {};
  }
  if (hostname !== 'localhost') {
    dnsTried.push(hostname);
    const err = new Error(`oracle: DNS lookup of ${hostname} refused`);
    err.code = 'ENOTFOUND';
    process.nextTick(() => callback(err));
    return {};
  }
  return realLookup.call(this, hostname, options, callback);
};

function isLocal(u) {
  return u.hostname.startsWith('127.') || u.hostname === 'localhost';
}

async function guardedFetch(input, init) {
  let u = new URL(typeof input === 'string' ? input : input.url ?? String(input));
  if (u.origin === 'https://oauth2.googleapis.com' && process.env.MX_ORACLE_OAUTH2_URL) {
    u = new URL(process.env.MX_ORACLE_OAUTH2_URL.replace(/\/$/, '') + u.pathname + u.search);
  }
  if (!isLocal(u)) {
    refused.push(u.origin);
    throw new Error(`oracle: refusing to reach ${u.origin}`);
  }
  return fetch(u.toString(), init);
}

const scope = process.env.MX_ORACLE_SCOPE || 'https://www.googleapis.com/auth/devstorage.read_only';
const calls = Number(process.env.MX_ORACLE_CALLS || '1');
const pause = Number(process.env.MX_ORACLE_SLEEP_MS || '0');
const out = { client: null, tokens: [], dns: dnsTried, refused };
try {
  const transporter = new Gaxios({ fetchImplementation: guardedFetch });
  const auth = new GoogleAuth({ scopes: [scope], clientOptions: { transporter } });
  const client = await auth.getClient();
  out.client = client.constructor.name;
  for (let i = 0; i < calls; i++) {
    if (i > 0 && pause > 0) await new Promise(r => setTimeout(r, pause));
    const { token } = await client.getAccessToken();
    out.tokens.push(token);
  }
  console.log(JSON.stringify(out));
} catch (e) {
  out.error = String(e && e.message ? e.message : e).slice(0, 500);
  console.log(JSON.stringify(out));
  process.exit(1);
}
