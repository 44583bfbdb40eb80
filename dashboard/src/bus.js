// The page's bus: a NATS connection over WebSocket, commands with the Flotilla envelope, and the live events
// (a JetStream ordered push consumer on FLEET_EVENTS, re-created by the client after any gap or reconnect).
import { headers, nuid, wsconnect } from "@nats-io/nats-core";
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";

export const ADMIN_USER = "admin";
export const EVENTS_STREAM = "FLEET_EVENTS";
export const EVENTS_SUBJECT = "fleet.v1.evt.>";
const CMD_PREFIX = "fleet.v1.cmd";
const ACTOR_HEADER = "Flotilla-Actor";
const REQUEST_TIMEOUT_MS = 10000;

/** The one place a command's subject is built: a named user sends `<command>.by.<user>` (the bus lets them
 * publish only that form, so the events their command causes name them); the built-in admin the plain form. */
export function commandSubject(service, verb, user) {
  const plain = `${CMD_PREFIX}.${service}.${verb}`;
  return user && user !== ADMIN_USER ? `${plain}.by.${user}` : plain;
}

/** A reply's error as one line a person can act on. */
export class CommandError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

export class Bus {
  constructor(nc, user) {
    this.nc = nc;
    this.user = user;
    this.js = jetstream(nc);
    this.decoder = new TextDecoder();
  }

  /** Connect as `user` (inbox `_INBOX.<user>`, the only one the grant lets a person read); reconnects forever. */
  static async connect(url, user, password, onStatus) {
    const nc = await wsconnect({
      servers: url,
      user,
      pass: password,
      inboxPrefix: `_INBOX.${user}`,
      name: `flotilla-dashboard ${user}`,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 1000,
    });
    const bus = new Bus(nc, user);
    (async () => {
      for await (const s of nc.status()) onStatus(s.type, s);
    })().catch(() => {});
    return bus;
  }

  /** Send a command (schema e.g. "upgrade.PauseRolloutRequest") and return the reply's `data`, or throw. */
  async request(service, verb, schema, body) {
    const h = headers();
    h.set("Flotilla-Schema", `${schema}/v1`);
    h.set("Nats-Msg-Id", nuid.next());
    h.set("Flotilla-Sent-At", new Date().toISOString());
    const subject = commandSubject(service, verb, this.user);
    const msg = await this.nc.request(subject, JSON.stringify(body ?? {}), {
      timeout: REQUEST_TIMEOUT_MS,
      headers: h,
    });
    const reply = JSON.parse(this.decoder.decode(msg.data));
    if (!reply.ok) {
      const err = reply.error ?? { code: "UNKNOWN", message: "the service answered without an error body" };
      throw new CommandError(err.code, err.message);
    }
    return reply.data;
  }

  /** Every page of a list query: `field` holds the items, `next_cursor` the next page. */
  async all(service, verb, schema, body, field, max = 100000) {
    const items = [];
    let cursor = "";
    do {
      const data = await this.request(service, verb, schema, { ...body, limit: 1000, cursor });
      items.push(...(data[field] ?? []));
      cursor = data.next_cursor ?? "";
    } while (cursor && items.length < max);
    return items;
  }

  /** Follow new events: `onEvent(subject, body, seq, actor)` for each (actor: who sent the command that
   * caused it, as the bus proved it; "" for what no person caused). Returns a function that stops it. */
  async follow(onEvent) {
    const consumer = await this.js.consumers.getPushConsumer(EVENTS_STREAM, {
      filter_subjects: EVENTS_SUBJECT,
      deliver_policy: DeliverPolicy.New,
    });
    const messages = await consumer.consume({
      callback: (m) => {
        let body = null;
        try {
          body = m.json();
        } catch {
          return; // not JSON: nothing the page can show; the services dead-letter such messages themselves
        }
        onEvent(m.subject, body, m.seq, m.headers?.get(ACTOR_HEADER) ?? "");
      },
    });
    return () => messages.stop();
  }

  close() {
    return this.nc.close();
  }
}
