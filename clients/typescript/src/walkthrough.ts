// The README walkthrough ("A first bus with curl") with a client generated from
// openapi/openapi.json: openapi-typescript's types, openapi-fetch's calls. The key goes in
// through the document's bearerKey scheme (a middleware), nothing else is written by hand.
//
//   node dist/walkthrough.js <base url> <admin key>
//
// Prints one JSON line with what it did; exits 1 on the first unexpected answer.
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema.js";

type Envelope = components["schemas"]["EnvelopeIn"];

function client(baseUrl: string, key: string) {
  const api = createClient<paths>({ baseUrl });
  const auth: Middleware = {
    onRequest({ request }) {
      request.headers.set("Authorization", `Bearer ${key}`);
      return request;
    },
  };
  api.use(auth);
  return api;
}

function check<T>(what: string, answer: { data?: T; error?: unknown; response: Response }): T {
  if (answer.data === undefined) {
    throw new Error(`${what}: ${answer.response.status} ${JSON.stringify(answer.error)}`);
  }
  return answer.data;
}

async function main(baseUrl: string, adminKey: string): Promise<void> {
  const admin = client(baseUrl, adminKey);
  const suffix = Math.random().toString(16).slice(2, 8);

  // An account for the shop's applications; its API key is shown once.
  const account = check(
    "create account",
    await admin.POST("/api/v1/accounts", { body: { name: `shop-${suffix}`, type: "gateway" } }),
  );
  const apiKey: string = account.api_key;
  const shop = client(baseUrl, apiKey);

  // Two actors of that account: an emitter and a consumer.
  const emitter = `shop-${suffix}.orders`;
  const consumer = `shop-${suffix}.invoicing`;
  for (const [name, kind] of [
    [emitter, "emitter"],
    [consumer, "consumer"],
  ] as const) {
    check(
      `create actor ${name}`,
      await admin.POST("/api/v1/actors", { body: { name, kind, account_id: account.name } }),
    );
  }

  // A pipeline, then activate it.
  const pipeline = check(
    "create pipeline",
    await admin.POST("/api/v1/pipelines", {
      body: {
        name: `orders-${suffix}`,
        version: "1",
        graph: {
          nodes: [
            {
              id: "orders",
              type: "emitter",
              actors: [emitter],
              sourcematch: { eventtypes: ["order.created"] },
            },
            { id: "invoicing", type: "consumer", actors: [consumer] },
          ],
          edges: ["orders->invoicing"],
        },
      },
    }),
  );
  check(
    "activate pipeline",
    await admin.POST("/api/v1/pipelines/{pipeline_id}/status", {
      params: { path: { pipeline_id: pipeline.id } },
      body: { status: "active" },
    }),
  );

  // The emitter posts an envelope: 202 once it is stored, with the process it started.
  const envelope: Envelope = {
    events: [{ type: "order.created", encoding: "json", items: [{ id: 1, total: 42 }] }],
  };
  const emission = check(
    "emit",
    await shop.POST("/api/v1/actors/{emitter}/output", {
      params: { path: { emitter } },
      body: envelope,
    }),
  );

  // The consumer polls for work, then reports success.
  const polled = await shop.GET("/api/v1/actors/{actor}/requests", {
    params: { path: { actor: consumer }, query: { wait: 10 } },
  });
  const request = check("poll", polled);
  if (!("request_id" in request)) throw new Error("poll: a batch without ?max");
  check(
    "report",
    await shop.POST("/api/v1/requests/{request_id}/state", {
      params: { path: { request_id: request.request_id } },
      body: { status: "success", messages: [{ text: "invoice 1 created" }] },
    }),
  );

  // The process is done; its log tells the story.
  const process = check(
    "process",
    await shop.GET("/api/v1/processes/{process_id}", {
      params: { path: { process_id: emission.process_id }, query: { wait: 10 } },
    }),
  );
  const logs = check(
    "logs",
    await shop.GET("/api/v1/processes/{process_id}/logs", {
      params: { path: { process_id: emission.process_id } },
    }),
  );
  // Without the key: the scheme is required, the answer is 401 problem+json.
  const anonymous = await createClient<paths>({ baseUrl }).GET("/api/v1/whoami");
  console.log(
    JSON.stringify({
      process_id: emission.process_id,
      status: process.status,
      log_lines: logs.items.length,
      without_key: anonymous.response.status,
    }),
  );
}

const [baseUrl, adminKey] = process.argv.slice(2);
if (!baseUrl || !adminKey) {
  console.error("usage: node dist/walkthrough.js <base url> <admin key>");
  process.exit(2);
}
main(baseUrl, adminKey).catch((error: unknown) => {
  console.error(String(error));
  process.exit(1);
});
