// A real OpenID Connect provider (panva/oidc-provider 9) for gpuhub's login tests.
//
// Environment:
//   OIDC_ACCOUNTS_FILE   JSON file, re-read on every lookup so a test can change a user's
//                        groups/email between logins:
//                        {"alice": {"password": "pw", "sub": "optional, default = the key",
//                                   "claims": {"preferred_username": "alice", "groups": [...],
//                                              "email": "...", "email_verified": true}}}
//   OIDC_CLIENT_ID, OIDC_CLIENT_SECRET
//   OIDC_REDIRECT_URIS   comma-separated redirect URIs of the client
//   OIDC_PORT            optional; default 0 = any free port on 127.0.0.1
//
// Prints one JSON line {"issuer": "http://127.0.0.1:PORT"} on stdout once it listens.
// Login is a plain HTML form (GET /interaction/UID, POST /interaction/UID/login with
// login + password, then POST /interaction/UID/confirm for consent), so tests can script it
// with requests and a browser can fill it in.
import { readFileSync } from 'node:fs';
import * as http from 'node:http';
import { URLSearchParams } from 'node:url';

import Provider from 'oidc-provider';

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') {
    console.error(`provider.mjs: environment variable ${name} is required`);
    process.exit(2);
  }
  return value;
}

const accountsFile = env('OIDC_ACCOUNTS_FILE');
const clientId = env('OIDC_CLIENT_ID');
const clientSecret = env('OIDC_CLIENT_SECRET');
const redirectUris = env('OIDC_REDIRECT_URIS').split(',').map((s) => s.trim()).filter(Boolean);
const port = Number(env('OIDC_PORT', '0'));

function loadAccounts() {
  return JSON.parse(readFileSync(accountsFile, 'utf8'));
}

function bySub(sub) {
  for (const [login, account] of Object.entries(loadAccounts())) {
    if ((account.sub ?? login) === sub) return account;
  }
  return undefined;
}

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(res, status, title, body) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>`
    + `<body><h1>${escapeHtml(title)}</h1>${body}</body></html>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const server = http.createServer();

server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    }],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name', 'groups'],
      email: ['email', 'email_verified'],
    },
    cookies: { keys: ['gpuhub-test-provider-cookie-key'] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    async findAccount(ctx, sub) {
      const account = bySub(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          // re-read, so claims reflect the file at the time the token is used (userinfo)
          const current = bySub(sub) ?? account;
          return { ...(current.claims ?? {}), sub };
        },
      };
    },
  });

  const callback = provider.callback();

  server.on('request', async (req, res) => {
    const url = new URL(req.url, issuer);
    const match = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|confirm))?$/);
    if (!match) {
      callback(req, res);
      return;
    }
    try {
      const details = await provider.interactionDetails(req, res);
      const [, uid, action] = match;
      if (req.method === 'GET' && !action) {
        if (details.prompt.name === 'login') {
          page(res, 200, 'Sign in to the test IdP',
            `<form method="post" action="/interaction/${escapeHtml(uid)}/login">`
            + '<input type="text" name="login" autofocus> '
            + '<input type="password" name="password"> '
            + '<button type="submit">Sign in</button></form>');
        } else {
          page(res, 200, `Authorize ${escapeHtml(details.params.client_id)}`,
            `<p>scopes: ${escapeHtml(details.params.scope)}</p>`
            + `<form method="post" action="/interaction/${escapeHtml(uid)}/confirm">`
            + '<button type="submit">Continue</button></form>');
        }
        return;
      }
      if (req.method === 'POST' && action === 'login') {
        const form = await readForm(req);
        const login = form.get('login') ?? '';
        const account = loadAccounts()[login];
        if (!account || account.password !== form.get('password')) {
          page(res, 401, 'Sign-in failed', '<p>Unknown login or wrong password.</p>');
          return;
        }
        await provider.interactionFinished(req, res, {
          login: { accountId: account.sub ?? login },
        }, { mergeWithLastSubmission: false });
        return;
      }
      if (req.method === 'POST' && action === 'confirm') {
        const { prompt: { details: missing }, params, session } = details;
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
        if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
        if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
        await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } },
          { mergeWithLastSubmission: true });
        return;
      }
      page(res, 405, 'Method not allowed', '');
    } catch (err) {
      console.error(err);
      page(res, 400, 'Interaction failed', `<pre>${escapeHtml(err.message)}</pre>`);
    }
  });

  console.log(JSON.stringify({ issuer }));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
