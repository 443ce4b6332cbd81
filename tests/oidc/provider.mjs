// A real OpenID Provider (npm oidc-provider, a certified implementation) for convergence's tests.
// usage: node provider.mjs CONFIG.json — prints "listening URL" once it serves on loopback.
//
// CONFIG: issuer (http://127.0.0.1:PORT), audience (the API's identifier), other_audiences, jwks (private
// keys, so a test can rotate them by restarting with new ones), clients (oidc-provider client metadata plus
// "groups" for client-credentials tokens and "ttl" in seconds), accounts (sub → {name, groups}) for the
// device flow's dev login. Access tokens are RS256 JWTs (typ at+jwt) carrying a "groups" claim.
import fs from 'node:fs';
import Provider from 'oidc-provider';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accounts = cfg.accounts || {};
const clientGroups = Object.fromEntries((cfg.clients || []).map((c) => [c.client_id, c.groups || []]));
const ttls = Object.fromEntries((cfg.clients || []).map((c) => [c.client_id, c.ttl || 300]));
const clients = (cfg.clients || []).map(({ groups, ttl, ...metadata }) => metadata);
const audiences = [cfg.audience, ...(cfg.other_audiences || [])];

const provider = new Provider(cfg.issuer, {
  clients,
  jwks: cfg.jwks,
  findAccount: async (ctx, sub) => (accounts[sub] ? {
    accountId: sub,
    claims: async () => ({ sub, preferred_username: accounts[sub].name || sub, groups: accounts[sub].groups || [] }),
  } : undefined),
  claims: { openid: ['sub'], profile: ['preferred_username', 'groups'] },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => cfg.audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource, client) => {
        if (!audiences.includes(resource)) throw new Error(`unknown resource ${resource}`);
        return {
          scope: 'openid profile cvg', audience: resource, accessTokenFormat: 'jwt',
          accessTokenTTL: ttls[client.clientId] || 300, jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: async (ctx, token) => {
    if (token.accountId && accounts[token.accountId]) {
      const account = accounts[token.accountId];
      return { groups: account.groups || [], preferred_username: account.name || token.accountId };
    }
    if (token.clientId && clientGroups[token.clientId]) return { groups: clientGroups[token.clientId] };
    return undefined;
  },
  ttl: {
    ClientCredentials: (ctx, token, client) => ttls[client.clientId] || 300,
    AccessToken: (ctx, token, client) => ttls[client.clientId] || 300,
  },
});
const port = Number(new URL(cfg.issuer).port);
const server = provider.listen(port, '127.0.0.1', () => console.log(`listening ${cfg.issuer}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
