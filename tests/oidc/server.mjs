// A real OpenID Provider (panva's oidc-provider) for tokend's integration
// tests, on loopback only. The Rust harness (tests/it/support/oidc.rs) starts
// it, reads the ready line and the event lines from stdout, and kills it; it
// also exits when its stdin closes, so a test process that dies leaves no
// server behind.
//
// Environment:
//   OIDC_PORT                   port on 127.0.0.1 (default 0: any free port)
//   OIDC_ACCESS_TOKEN_TTL       access token lifetime in seconds (default 60)
//   OIDC_REFRESH_TOKEN_TTL      refresh token lifetime in seconds (default 1 day)
//   OIDC_JWT_CLIENT_KEYS        comma-separated PEM files (private or public
//                               keys) whose public halves are tokend-jwt's JWKS
//
// stdout, one JSON object a line: first {"ready": true, "issuer", "port"},
// then one {"event", "client_id", "grant_type", ...} per token, device,
// revocation or introspection request, successful or not. No token, code or
// secret is ever printed.

import { createServer } from 'node:http';
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const env = (name, fallback) => process.env[name] ?? fallback;
const seconds = (name, fallback) => {
  const value = Number.parseInt(env(name, `${fallback}`), 10);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive number of seconds`);
  }
  return value;
};

const accessTokenTtl = seconds('OIDC_ACCESS_TOKEN_TTL', 60);
const refreshTokenTtl = seconds('OIDC_REFRESH_TOKEN_TTL', 24 * 60 * 60);

// The resource server a client_credentials (or authorization code) request
// may name with `resource` (RFC 8707): its tokens are JWTs for that audience.
export const API_RESOURCE = 'https://api.tokend.test';

// Client secrets. tokend-hs signs its assertions with its secret (HS256),
// which must be at least 32 bytes.
const SECRETS = {
  basic: 'tokend-basic-secret-5Hq2',
  post: 'tokend-post-secret-9Xw7',
  hs: 'tokend-hs-secret-0123456789abcdef0123456789abcdef',
  dpop: 'tokend-dpop-secret-3Lm8',
};

// Native loopback redirects: the port is the CLI's choice at run time, and
// oidc-provider ignores it when matching (RFC 8252 §7.3).
const REDIRECTS = ['http://127.0.0.1/callback', 'http://[::1]/callback'];
const CONFIDENTIAL_GRANTS = [
  'authorization_code',
  'refresh_token',
  'client_credentials',
  'urn:ietf:params:oauth:grant-type:device_code',
];
const PUBLIC_GRANTS = [
  'authorization_code',
  'refresh_token',
  'urn:ietf:params:oauth:grant-type:device_code',
];
const SCOPES = ['openid', 'offline_access', 'read', 'write'];

function client(id, extra) {
  return {
    client_id: id,
    application_type: 'native',
    redirect_uris: REDIRECTS,
    response_types: ['code'],
    grant_types: CONFIDENTIAL_GRANTS,
    scope: SCOPES.join(' '),
    ...extra,
  };
}

function jwtClientKeys() {
  const paths = env('OIDC_JWT_CLIENT_KEYS', '').split(',').filter(Boolean);
  return paths.map((path) => {
    const jwk = createPublicKey(readFileSync(path)).export({ format: 'jwk' });
    return { ...jwk, use: 'sig' };
  });
}

const jwtKeys = jwtClientKeys();
const clients = [
  client('tokend-basic', {
    client_secret: SECRETS.basic,
    token_endpoint_auth_method: 'client_secret_basic',
  }),
  client('tokend-post', {
    client_secret: SECRETS.post,
    token_endpoint_auth_method: 'client_secret_post',
  }),
  client('tokend-public', {
    token_endpoint_auth_method: 'none',
    grant_types: PUBLIC_GRANTS,
  }),
  client('tokend-hs', {
    client_secret: SECRETS.hs,
    token_endpoint_auth_method: 'client_secret_jwt',
  }),
  client('tokend-dpop', {
    client_secret: SECRETS.dpop,
    token_endpoint_auth_method: 'client_secret_basic',
    dpop_bound_access_tokens: true,
  }),
  client('tokend-dpop-public', {
    token_endpoint_auth_method: 'none',
    grant_types: PUBLIC_GRANTS,
    dpop_bound_access_tokens: true,
  }),
];
if (jwtKeys.length > 0) {
  clients.push(client('tokend-jwt', {
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: jwtKeys },
  }));
}

// Keys made at start: nothing secret is committed, and each server signs
// its ID tokens and cookies with its own.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'ES256' };

function events(provider) {
  const write = (event, ctx, error) => {
    const line = {
      event,
      client_id: ctx?.oidc?.client?.clientId ?? null,
      grant_type: ctx?.oidc?.params?.grant_type ?? null,
      dpop: Boolean(ctx?.get?.('dpop')),
      has_resource: Boolean(ctx?.oidc?.params?.resource),
    };
    if (error) {
      line.error = error.error ?? error.name;
      line.error_description = error.error_description ?? null;
    }
    process.stdout.write(`${JSON.stringify(line)}\n`);
  };
  for (const name of [
    'grant.success',
    'device_authorization.success',
    'revocation.success',
    'introspection.success',
  ]) {
    provider.on(name, (ctx) => write(name, ctx));
  }
  for (const name of [
    'grant.error',
    'device_authorization.error',
    'revocation.error',
    'introspection.error',
    'authorization.error',
    'server_error',
  ]) {
    provider.on(name, (ctx, error) => write(name, ctx, error));
  }
}

const server = createServer();
await new Promise((resolve) => {
  server.listen(Number.parseInt(env('OIDC_PORT', '0'), 10), '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  responseTypes: ['code'],
  scopes: SCOPES,
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    dPoP: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        if (resource !== API_RESOURCE) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'read write',
          audience: API_RESOURCE,
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
        };
      },
    },
  },
  pkce: {
    // Required of public clients (the default); S256 is the only method.
    required: (_ctx, client) => client.clientAuthMethod === 'none',
  },
  // tokend's credentials live beyond the browser session, and every client
  // here may refresh: a refresh token without asking for offline_access.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  // Every refresh rotates its token; reusing a rotated one revokes the grant.
  rotateRefreshToken: true,
  ttl: {
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    AuthorizationCode: 60,
    DeviceCode: 600,
    Grant: refreshTokenTtl,
    IdToken: accessTokenTtl,
    Interaction: 600,
    RefreshToken: refreshTokenTtl,
    Session: refreshTokenTtl,
  },
});
events(provider);
server.on('request', provider.callback());

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));

process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);
