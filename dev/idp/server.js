// spangate's local OpenID provider: node-oidc-provider 9.13.3 dressed as an Okta custom
// authorization server ("default"), for development, the demo and the test suites.
//
//   IDP_PORT=9400 IDP_KEYS=/path/to/keys.json node dev/idp/server.js
//
// Environment:
//   IDP_HOST     address to listen on and to put in the issuer (default 127.0.0.1)
//   IDP_PORT     TCP port (required)
//   IDP_KEYS     JSON file {"keys": [<private JWK>, ...]}, each with kid and alg; at least one
//                RSA key with alg RS256 and one EC P-256 key with alg ES256 (required;
//                `python -m gateway.dev.keys PATH` writes one)
//   IDP_CLIENTS  clients file (default: clients.json next to this file)
//                (each client: client_id, client_secret, scopes, claims, alg RS256|ES256,
//                access_token_ttl, auth_method client_secret_basic|client_secret_post, and for
//                workload tokens shape, subject, audiences: see "Workload shapes" below)
//
// Issuer: http://IDP_HOST:IDP_PORT/oauth2/default, with Okta's routes under it:
//   /.well-known/openid-configuration  /.well-known/oauth-authorization-server
//   /v1/token  /v1/keys  /v1/introspect  /v1/revoke
//
// Grants: client credentials, and RFC 8693 token exchange (below). Access tokens for resource
// api://shop (the default when a request names none) are JWTs shaped like Okta's: header
// {kid, alg} without typ; claims ver, jti, iss, aud, iat, exp, cid, scp (an array), sub
// (= client_id), plus the client's extra claims from the clients file. Resource
// api://shop-opaque gets opaque tokens (for introspection and revocation). Everything lives in
// memory: a restart forgets every opaque token.
//
// Token exchange (grant_type urn:ietf:params:oauth:grant-type:token-exchange): the
// authenticated client (the actor, e.g. an AI agent) presents subject_token, an access token of
// this provider (a JWT it signed, or an opaque token it issued; subject_token_type
// ...:token-type:access_token or ...:token-type:jwt), and gets a token for the subject with
// an RFC 8693 `act` claim naming itself: {sub: <subject's sub>, act: {sub: <actor client_id>,
// act: <the subject token's act, if any>}}, the subject's extra claims (tenant, groups...),
// cid = the actor, scp = the requested scopes (each one the actor's clients-file list allows),
// and an expiry no later than the subject token's. `resource` picks the format as above.
// requested_token_type ...:token-type:id_token instead returns an OpenID ID token (aud = the
// actor client, an at_hash, signed like any ID token): the tests use it to send an ID token
// where an access token belongs.
//
// Workload shapes: a client with "shape" gets tokens shaped like a workload's instead of Okta's,
// for the audience it asks for (resource=<audience>, one of its "audiences"; the first when it
// names none), with sub = its "subject" and its "claims" as they are (nested objects too), no
// ver/cid/scp:
//   kubernetes      a projected service-account token: header {alg, kid}; aud an array [aud],
//                   exp, iat, nbf, iss, jti, sub, and the client's claims ("kubernetes.io": {...})
//   google          a Google-signed ID token: header {alg, kid, typ: JWT}; aud a string, azp
//                   (= sub unless the client's claims say), email, email_verified, exp, iat, iss
//   github-actions  a GitHub Actions OIDC token: header {alg, kid, typ: JWT}; aud a string, jti,
//                   nbf, exp, iat, iss, sub and the client's claims (repository, ref, ...)
//
// Prints exactly one line, "READY <issuer>", to stdout once listening; everything else goes to
// stderr. Bad configuration: a message on stderr and exit status 2. SIGTERM/SIGINT: exit 0.

import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import process from 'node:process';
import { fileURLToPath } from 'node:url';

// oidc-provider prints its notices with console.info (stdout); keep stdout for READY alone.
console.info = console.error;
console.log = console.error;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ISSUER_PATH = '/oauth2/default';

// Resource servers (RFC 8707 resource indicators) and the scopes each accepts.
const SHOP_SCOPES = ['orders.read', 'orders.write', 'customers.read'];
const RESOURCES = {
  'api://shop': { scope: SHOP_SCOPES.join(' '), accessTokenFormat: 'jwt' },
  'api://shop-opaque': { scope: SHOP_SCOPES.join(' '), accessTokenFormat: 'opaque' },
};
const DEFAULT_RESOURCE = 'api://shop';

const SUPPORTED_ALGS = new Set(['RS256', 'ES256']);
// How a client authenticates at the token, introspection and revocation endpoints.
const AUTH_METHODS = new Set(['client_secret_basic', 'client_secret_post']);
const DEFAULT_TTL = 3600;
// Token shapes: 'okta' (the default) and the workload shapes of the header above.
const SHAPES = new Set(['okta', 'kubernetes', 'google', 'github-actions']);
// Claims the provider sets itself; a client's extra claims may not override them.
const RESERVED_CLAIMS = new Set([
  'iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'ver', 'cid', 'scp', 'scope', 'client_id',
  'cnf', 'authorization_details', 'auth_time', 'act', 'may_act',
]);

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TOKEN_TYPE = {
  accessToken: 'urn:ietf:params:oauth:token-type:access_token',
  jwt: 'urn:ietf:params:oauth:token-type:jwt',
  idToken: 'urn:ietf:params:oauth:token-type:id_token',
};

class ConfigError extends Error {}

function fail(message) {
  throw new ConfigError(message);
}

function isPlainObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function readJson(file, what) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    fail(`cannot read ${what} ${file}: ${err.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    fail(`${what} ${file} is not valid JSON: ${err.message}`);
  }
  return undefined;
}

function readEnv() {
  const host = process.env.IDP_HOST || '127.0.0.1';
  const portText = process.env.IDP_PORT;
  if (!portText) fail('IDP_PORT is required (the TCP port to listen on)');
  if (!/^\d+$/.test(portText) || +portText < 1 || +portText > 65535) {
    fail(`IDP_PORT must be a port number 1-65535, got ${JSON.stringify(portText)}`);
  }
  const keysPath = process.env.IDP_KEYS;
  if (!keysPath) {
    fail('IDP_KEYS is required: a JSON file {"keys": [<private JWK>, ...]} '
      + '(write one with: python -m gateway.dev.keys PATH)');
  }
  const clientsPath = process.env.IDP_CLIENTS || path.join(HERE, 'clients.json');
  return {
    host, port: +portText, keysPath, clientsPath,
  };
}

function loadKeys(file) {
  const doc = readJson(file, 'keys file');
  if (!isPlainObject(doc) || !Array.isArray(doc.keys) || doc.keys.length === 0) {
    fail(`keys file ${file} must hold {"keys": [<private JWK>, ...]}`);
  }
  const kids = new Set();
  doc.keys.forEach((jwk, i) => {
    const where = `keys file ${file}, key #${i}`;
    if (!isPlainObject(jwk)) fail(`${where} is not a JSON object`);
    if (typeof jwk.kid !== 'string' || !jwk.kid) fail(`${where} has no kid`);
    if (kids.has(jwk.kid)) fail(`${where}: duplicate kid ${jwk.kid}`);
    kids.add(jwk.kid);
    if (typeof jwk.alg !== 'string' || !jwk.alg) fail(`${where} (kid ${jwk.kid}) has no alg`);
    if (typeof jwk.d !== 'string') fail(`${where} (kid ${jwk.kid}) is not a private key (no "d")`);
    if (jwk.use !== undefined && jwk.use !== 'sig') fail(`${where} (kid ${jwk.kid}) has use ${jwk.use}, not sig`);
  });
  const hasRsa = doc.keys.some((k) => k.kty === 'RSA' && k.alg === 'RS256');
  const hasEc = doc.keys.some((k) => k.kty === 'EC' && k.crv === 'P-256' && k.alg === 'ES256');
  if (!hasRsa) fail(`keys file ${file} has no RSA key with alg RS256`);
  if (!hasEc) fail(`keys file ${file} has no EC P-256 key with alg ES256`);
  return { keys: doc.keys };
}

function loadClients(file) {
  const doc = readJson(file, 'clients file');
  if (!Array.isArray(doc) || doc.length === 0) fail(`clients file ${file} must hold a non-empty list of clients`);
  const byId = new Map();
  doc.forEach((c, i) => {
    const where = `clients file ${file}, client #${i}`;
    if (!isPlainObject(c)) fail(`${where} is not a JSON object`);
    const id = c.client_id;
    if (typeof id !== 'string' || !id) fail(`${where} has no client_id`);
    if (byId.has(id)) fail(`${where}: duplicate client_id ${id}`);
    if (typeof c.client_secret !== 'string' || !c.client_secret) fail(`${where} (${id}) has no client_secret`);
    if (c.description !== undefined && typeof c.description !== 'string') fail(`${where} (${id}): description must be a string`);
    const scopes = c.scopes ?? [];
    if (!Array.isArray(scopes) || !scopes.every((s) => typeof s === 'string')) {
      fail(`${where} (${id}): scopes must be a list of strings`);
    }
    for (const s of scopes) {
      if (!SHOP_SCOPES.includes(s)) fail(`${where} (${id}): unknown scope ${s} (known: ${SHOP_SCOPES.join(', ')})`);
    }
    const claims = c.claims ?? {};
    if (!isPlainObject(claims)) fail(`${where} (${id}): claims must be a JSON object`);
    for (const name of Object.keys(claims)) {
      if (RESERVED_CLAIMS.has(name)) fail(`${where} (${id}): claim ${name} is set by the provider and may not be overridden`);
    }
    const alg = c.alg ?? 'RS256';
    if (!SUPPORTED_ALGS.has(alg)) fail(`${where} (${id}): alg must be RS256 or ES256, got ${JSON.stringify(alg)}`);
    const authMethod = c.auth_method ?? 'client_secret_basic';
    if (!AUTH_METHODS.has(authMethod)) fail(`${where} (${id}): auth_method must be client_secret_basic or client_secret_post`);
    const ttl = c.access_token_ttl ?? DEFAULT_TTL;
    if (!Number.isSafeInteger(ttl) || ttl <= 0) fail(`${where} (${id}): access_token_ttl must be a positive integer (seconds)`);
    const shape = c.shape ?? 'okta';
    if (!SHAPES.has(shape)) fail(`${where} (${id}): shape must be one of ${[...SHAPES].join(', ')}`);
    const subject = c.subject ?? id;
    if (typeof subject !== 'string' || !subject) fail(`${where} (${id}): subject must be a non-empty string`);
    const audiences = c.audiences ?? [];
    if (!Array.isArray(audiences) || !audiences.every((a) => typeof a === 'string' && URL.canParse(a))) {
      fail(`${where} (${id}): audiences must be a list of absolute URIs`);
    }
    if (shape !== 'okta' && (audiences.length === 0 || scopes.length)) {
      fail(`${where} (${id}): a client of shape ${shape} needs audiences and takes no scopes`);
    }
    if (shape === 'okta' && (audiences.length || c.subject !== undefined)) {
      fail(`${where} (${id}): audiences and subject are for workload shapes`);
    }
    byId.set(id, {
      clientId: id,
      clientSecret: c.client_secret,
      scopes: [...new Set(scopes)],
      claims,
      alg,
      ttl,
      authMethod,
      shape,
      subject,
      audiences,
    });
  });
  return byId;
}

// The public half of each signing key, by kid: subject tokens of a token exchange are verified
// against these (the provider signed them itself).
function publicKeysByKid(jwks) {
  const byKid = new Map();
  for (const jwk of jwks.keys) {
    const pub = crypto.createPublicKey({ key: jwk, format: 'jwk' });
    byKid.set(jwk.kid, { alg: jwk.alg, key: pub });
  }
  return byKid;
}

const VERIFY_PARAMS = {
  RS256: (key) => ['sha256', { key }],
  ES256: (key) => ['sha256', { key, dsaEncoding: 'ieee-p1363' }],
};

// Verify a compact JWS this provider signed; returns its payload, or undefined when anything is
// wrong (format, kid, alg, signature, issuer, expiry).
function verifyOwnJwt(value, keysByKid, issuer) {
  const parts = value.split('.');
  if (parts.length !== 3) return undefined;
  let header;
  let payload;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
  const entry = keysByKid.get(header?.kid);
  if (!entry || header.alg !== entry.alg || !VERIFY_PARAMS[entry.alg]) return undefined;
  const [digest, key] = VERIFY_PARAMS[entry.alg](entry.key);
  const ok = crypto.verify(
    digest,
    Buffer.from(`${parts[0]}.${parts[1]}`),
    key,
    Buffer.from(parts[2], 'base64url'),
  );
  if (!ok || !isPlainObject(payload) || payload.iss !== issuer) return undefined;
  if (typeof payload.exp !== 'number' || payload.exp <= Math.floor(Date.now() / 1000)) return undefined;
  return payload;
}

// A workload client's token: the header and payload its shape has (see the header of this
// file), or undefined for an Okta-shaped client. ``jwt`` is the provider's own: its payload has
// jti, iss, aud, iat, exp, client_id, scope, sub (the client id) and the client's claims.
function workloadShape(persona, jwt) {
  if (!persona || persona.shape === 'okta') return undefined;
  const {
    jti, iss, aud, iat, exp,
  } = jwt.payload;
  const sub = persona.subject; // the provider's own sub of a client-credentials token is its id
  const audience = Array.isArray(aud) ? aud[0] : aud;
  const claims = structuredClone(persona.claims);
  // The header is built as {alg, typ: 'at+jwt', kid, ...jwt.header}: an undefined typ drops it.
  if (persona.shape === 'kubernetes') {
    return {
      header: { typ: undefined },
      payload: {
        aud: [audience], exp, iat, iss, jti, ...claims, nbf: iat, sub,
      },
    };
  }
  if (persona.shape === 'google') {
    return {
      header: { typ: 'JWT' },
      payload: {
        aud: audience, azp: sub, ...claims, exp, iat, iss, sub,
      },
    };
  }
  return {
    header: { typ: 'JWT' },
    payload: {
      jti, sub, aud: audience, ...claims, iss, nbf: iat, exp, iat,
    },
  };
}

function issuerFor(host, port) {
  const h = host.includes(':') ? `[${host}]` : host;
  return `http://${h}:${port}${ISSUER_PATH}`;
}

async function main() {
  const env = readEnv();
  const jwks = loadKeys(env.keysPath);
  const personas = loadClients(env.clientsPath);
  const issuer = issuerFor(env.host, env.port);

  const { default: Provider, errors } = await import('oidc-provider');

  const personaOf = (client) => personas.get(client?.clientId);
  const keysByKid = publicKeysByKid(jwks);
  // Claims of tokens minted by the token exchange, by token object: sub, act and the subject's
  // claims replace the actor's persona claims.
  const exchanged = new WeakMap();

  // RFC 8707 resource -> the resource server the token is for; refuses any requested scope
  // outside the client's list, as Okta does, with the provider's own invalid_scope error.
  const resourceServerInfo = (ctx, resource, client) => {
    const persona = personaOf(client);
    if (!persona) throw new errors.InvalidClient('client not configured');
    if (persona.shape !== 'okta') {
      // A workload token for any of the client's audiences, signed like its shape's.
      if (!persona.audiences.includes(resource)) {
        throw new errors.InvalidTarget(`client ${persona.clientId} gets no tokens for ${resource}`);
      }
      if (ctx.oidc.params.scope) throw new errors.InvalidScope('workload tokens carry no scopes', ctx.oidc.params.scope);
      return {
        scope: '',
        audience: resource,
        accessTokenFormat: 'jwt',
        accessTokenTTL: persona.ttl,
        jwt: { sign: { alg: persona.alg } },
      };
    }
    const rs = RESOURCES[resource];
    if (!rs) throw new errors.InvalidTarget(`unknown resource ${resource}`);
    const requested = (ctx.oidc.params.scope ?? '').split(' ').filter(Boolean);
    for (const s of requested) {
      if (!persona.scopes.includes(s)) {
        throw new errors.InvalidScope('requested scope is not allowed', s);
      }
    }
    return {
      scope: rs.scope,
      audience: resource,
      accessTokenFormat: rs.accessTokenFormat,
      accessTokenTTL: persona.ttl,
      ...(rs.accessTokenFormat === 'jwt' ? { jwt: { sign: { alg: persona.alg } } } : {}),
    };
  };

  const configuration = {
    jwks,
    clients: [...personas.values()].map((p) => ({
      client_id: p.clientId,
      client_secret: p.clientSecret,
      grant_types: ['client_credentials', TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: p.authMethod,
      ...(p.scopes.length ? { scope: p.scopes.join(' ') } : {}),
    })),
    scopes: ['openid', ...SHOP_SCOPES],
    // No browser flows: discovery then lists client_credentials as the only grant type.
    responseTypes: ['none'],
    routes: {
      authorization: '/v1/authorize',
      token: '/v1/token',
      jwks: '/v1/keys',
      introspection: '/v1/introspect',
      revocation: '/v1/revoke',
      userinfo: '/v1/userinfo',
      end_session: '/v1/logout',
    },
    features: {
      devInteractions: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Any authenticated client of this server may introspect, as with Okta.
        allowedPolicy: async (ctx, client) => client.clientAuthMethod !== 'none',
      },
      revocation: {
        enabled: true,
        // A client may revoke only its own tokens.
        allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => {
          const persona = personaOf(client);
          const own = persona && persona.shape !== 'okta' ? persona.audiences[0] : DEFAULT_RESOURCE;
          return oneOf ?? own;
        },
        getResourceServerInfo: async (ctx, resource, client) => resourceServerInfo(
          ctx, resource, client,
        ),
      },
    },
    // The client's extra claims: in JWT access tokens and in introspection responses. sub is
    // repeated here so that introspection, like Okta's, names the subject (= client_id) too.
    extraTokenClaims: async (ctx, token) => {
      const minted = exchanged.get(token);
      if (minted) return structuredClone(minted);
      const persona = personas.get(token.clientId);
      return persona ? { sub: token.clientId, ...structuredClone(persona.claims) } : undefined;
    },
    ttl: {
      ClientCredentials: (ctx, token, client) => personaOf(client)?.ttl ?? DEFAULT_TTL,
      AccessToken: (ctx, token, client) => personaOf(client)?.ttl ?? DEFAULT_TTL,
      IdToken: DEFAULT_TTL,
    },
    formats: {
      customizers: {
        // Okta's shape: no typ header; ver, cid and an scp array instead of client_id and a
        // space-separated scope string.
        jwt: async (ctx, token, jwt) => {
          const shaped = workloadShape(personas.get(token.clientId), jwt);
          if (shaped) {
            jwt.header = shaped.header;
            jwt.payload = shaped.payload;
            return;
          }
          const {
            jti, iss, aud, iat, exp, sub, client_id: cid, scope, ...rest
          } = jwt.payload;
          const { uid, ...extra } = rest;
          const minted = exchanged.get(token);
          const payload = {
            ver: 1,
            jti,
            iss,
            aud,
            iat,
            exp,
            cid,
            ...(uid !== undefined ? { uid } : {}),
            scp: scope ? scope.split(' ') : [],
            sub: minted ? minted.sub : sub,
            ...extra,
          };
          for (const [k, v] of Object.entries(payload)) {
            if (v === undefined) delete payload[k];
          }
          // The header is built as {alg, typ: 'at+jwt', kid, ...jwt.header}: an undefined typ
          // here drops the member when the header is serialised.
          jwt.header = { typ: undefined };
          jwt.payload = payload;
        },
      },
    },
    clientBasedCORS: () => false,
    enabledJWA: {
      idTokenSigningAlgValues: ['RS256', 'ES256'],
    },
  };

  let provider;
  try {
    provider = new Provider(issuer, configuration);
  } catch (err) {
    fail(`invalid provider configuration: ${err.message}`);
  }
  // RFC 8693 token exchange: see the header of this file.
  const subjectOf = async (value, type) => {
    if (type !== TOKEN_TYPE.accessToken && type !== TOKEN_TYPE.jwt) {
      throw new errors.InvalidRequest('subject_token_type must be an access token or a jwt');
    }
    const payload = verifyOwnJwt(value, keysByKid, issuer);
    if (payload) {
      const claims = Object.fromEntries(
        Object.entries(payload).filter(([k]) => !RESERVED_CLAIMS.has(k) || k === 'act'),
      );
      return { sub: payload.sub, exp: payload.exp, claims };
    }
    const stored = await provider.ClientCredentials.find(value);
    if (stored?.isValid) {
      const { sub, ...claims } = stored.extra ?? {};
      return { sub: sub ?? stored.clientId, exp: stored.exp, claims };
    }
    throw new errors.InvalidGrant('subject_token is invalid, expired or not issued here');
  };

  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const { params, client } = ctx.oidc;
    if (!params.subject_token) throw new errors.InvalidRequest('missing subject_token');
    const subject = await subjectOf(params.subject_token, params.subject_token_type);
    if (typeof subject.sub !== 'string' || !subject.sub) {
      throw new errors.InvalidGrant('subject_token has no subject');
    }
    const { act: priorAct, ...subjectClaims } = subject.claims;
    const act = { sub: client.clientId, ...(isPlainObject(priorAct) ? { act: priorAct } : {}) };
    const remaining = subject.exp - Math.floor(Date.now() / 1000);

    if (params.requested_token_type === TOKEN_TYPE.idToken) {
      const idToken = new provider.IdToken({ sub: subject.sub }, { ctx });
      idToken.scope = 'openid';
      idToken.set('at_hash', params.subject_token);
      ctx.body = {
        access_token: await idToken.issue({ use: 'idtoken' }),
        issued_token_type: TOKEN_TYPE.idToken,
        token_type: 'N_A',
      };
      return;
    }
    if (params.requested_token_type && params.requested_token_type !== TOKEN_TYPE.accessToken) {
      throw new errors.InvalidRequest('requested_token_type must be an access token or an id_token');
    }

    const resource = params.resource ?? DEFAULT_RESOURCE;
    if (Array.isArray(resource)) throw new errors.InvalidTarget('only one resource is supported');
    const info = resourceServerInfo(ctx, resource, client);
    const requested = (params.scope ?? '').split(' ').filter(Boolean);
    const token = new provider.ClientCredentials({
      client,
      scope: requested.filter((s) => info.scope.split(' ').includes(s)).join(' ') || undefined,
    });
    token.resourceServer = new provider.ResourceServer(resource, info);
    token.expiresIn = Math.max(1, Math.min(token.expiration, remaining));
    exchanged.set(token, { ...subjectClaims, sub: subject.sub, act });
    ctx.oidc.entity('ClientCredentials', token);
    const value = await token.save();
    ctx.body = {
      access_token: value,
      issued_token_type: TOKEN_TYPE.accessToken,
      token_type: 'Bearer',
      expires_in: token.expiration,
      ...(token.scope ? { scope: token.scope } : {}),
    };
  }, ['subject_token', 'subject_token_type', 'requested_token_type', 'scope', 'resource']);

  provider.on('server_error', (ctx, err) => {
    console.error(`idp: server error on ${ctx.method} ${ctx.path}:`, err);
  });

  const callback = provider.callback();
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === ISSUER_PATH || url.startsWith(`${ISSUER_PATH}/`) || url.startsWith(`${ISSUER_PATH}?`)) {
      let rest = url.slice(ISSUER_PATH.length);
      if (!rest.startsWith('/')) rest = `/${rest}`;
      // Mounted like Express does it: the provider derives its mount path from these two.
      req.originalUrl = url;
      req.url = rest;
      callback(req, res);
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'not_found', error_description: `the issuer is ${issuer}` }));
  });

  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    console.error(`idp: ${signal}, stopping`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(env.port, env.host, () => {
      server.off('error', reject);
      resolve();
    });
  }).catch((err) => {
    fail(`cannot listen on ${env.host}:${env.port}: ${err.code ?? ''} ${err.message}`);
  });
  server.on('error', (err) => console.error('idp: server error:', err));

  process.stdout.write(`READY ${issuer}\n`);
}

main().catch((err) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`idp: error: ${err.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`idp: fatal: ${err?.stack ?? err}\n`);
  process.exit(1);
});
