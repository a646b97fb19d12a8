// The live view of Sluice's connections. Everything shown here that came
// from a client (HELO, addresses, replies) is put in the page with
// textContent or as an attribute value, never parsed as markup.
"use strict";

(() => {
  const MAX_ROWS = 500; // the oldest rows go beyond this
  const STATS_EVERY = 2000; // ms between two reads of /watch/stats
  // Codes with a colour of their own in watch.css; any other is "other".
  const CODES = new Set(["OK", "DONE", "DENY", "DENYSOFT", "DENY_DISCONNECT", "DENYSOFT_DISCONNECT"]);
  const RESULT_TEXT = {
    open: "in progress",
    accepted: "queued",
    deferred: "deferred",
    refused: "refused",
    aborted: "aborted",
    closed: "no mail",
  };

  const $ = (id) => document.getElementById(id);
  // An admin token given in the page's address (?token=) goes along to the
  // feeds, which cannot send an Authorization header.
  const token = new URLSearchParams(location.search).get("token");
  const feed = (path) => (token ? path + "?token=" + encodeURIComponent(token) : path);
  const tbody = $("rows");
  const fListener = $("f-listener");
  const fClient = $("f-client");
  const fResult = $("f-result");

  let conns = new Map(); // connection id → {info, rows, current}
  let byTx = new Map(); // connection id + "\n" + transaction id → row
  let rows = []; // every row, newest first
  let listeners = new Set();
  let lastSeq = 0;
  let lost = 0;
  let justOpened = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clock(t) {
    const d = new Date(t);
    if (isNaN(d)) return "";
    return d.toLocaleTimeString([], { hour12: false });
  }

  // The host part of "192.0.2.1:25" or "[2001:db8::1]:25".
  function host(remote) {
    if (!remote) return "";
    if (remote.startsWith("[")) {
      const end = remote.indexOf("]");
      return end > 0 ? remote.slice(1, end) : remote;
    }
    const i = remote.lastIndexOf(":");
    return i > 0 && remote.indexOf(":") === i ? remote.slice(0, i) : remote;
  }

  function addListener(name) {
    if (!name || listeners.has(name)) return;
    listeners.add(name);
    const o = el("option", null, name);
    o.value = name;
    fListener.append(o);
  }

  // A connection's record, made on the fly when the page opened after its
  // connect event.
  function connOf(ev) {
    let c = conns.get(ev.conn);
    if (!c) {
      c = {
        info: { time: ev.time, listener: ev.listener, remote: ev.remote, helo: "", tls: "", user: "" },
        rows: [],
        current: null,
      };
      conns.set(ev.conn, c);
      addListener(ev.listener);
    }
    return c;
  }

  function newRow(c, conn, tx, time) {
    const tr = el("tr");
    const cells = {};
    for (const name of ["time", "listener", "remote", "helo", "tls", "user", "sender", "rcpts", "hooks", "result"]) {
      cells[name] = el("td", name === "remote" || name === "sender" ? "addr" : name);
      tr.append(cells[name]);
    }
    const row = {
      conn, tx: tx || "", tr, cells,
      time: time || c.info.time,
      sender: null, rcpts: [], refused: [], hooks: [], result: "open", queueId: "", reply: "",
    };
    if (row.tx) byTx.set(conn + "\n" + row.tx, row);
    c.rows.push(row);
    c.current = row;
    rows.unshift(row);
    tbody.prepend(tr);
    while (rows.length > MAX_ROWS) {
      const old = rows.pop();
      old.tr.remove();
      if (old.tx) byTx.delete(old.conn + "\n" + old.tx);
      const oc = conns.get(old.conn);
      if (oc) {
        oc.rows = oc.rows.filter((r) => r !== old);
        if (oc.current === old) oc.current = null;
      }
    }
    return row;
  }

  // The row an event belongs to. starts: the event begins a transaction.
  function rowFor(ev, starts) {
    const c = connOf(ev);
    if (ev.tx) {
      const r = byTx.get(ev.conn + "\n" + ev.tx);
      if (r) return r;
    }
    const cur = c.current;
    if (cur && cur.result === "open" && !(ev.tx && cur.tx) && !(starts && cur.sender !== null)) {
      if (ev.tx) {
        cur.tx = ev.tx;
        byTx.set(ev.conn + "\n" + ev.tx, cur);
      }
      return cur;
    }
    if (cur && !starts && !ev.tx) return cur; // after the transaction ended
    return newRow(c, ev.conn, ev.tx, ev.time);
  }

  function render(row) {
    const c = conns.get(row.conn);
    const info = c ? c.info : row.info;
    if (c) row.info = Object.assign({}, info);
    const k = row.cells;
    k.time.textContent = clock(row.time);
    k.listener.textContent = info.listener || "";
    k.remote.textContent = info.remote || "";
    k.helo.textContent = info.helo || "";
    k.tls.textContent = info.tls || "";
    k.user.textContent = info.user || "";
    k.sender.textContent = row.sender === null ? "" : (row.sender === "" ? "<>" : row.sender);
    k.rcpts.replaceChildren(
      ...row.rcpts.map((r) => el("div", null, r)),
      ...row.refused.filter((r) => !row.rcpts.includes(r)).map((r) => {
        const d = el("div", "rcpt-refused", r);
        d.title = "refused";
        return d;
      }));
    k.hooks.replaceChildren(...row.hooks.map(badge));
    let text = RESULT_TEXT[row.result] || row.result;
    if (row.result === "accepted" && row.queueId) text += " " + row.queueId;
    const res = el("span", "result result-" + (RESULT_TEXT[row.result] ? row.result : "other"), text);
    const parts = [res];
    if (row.reply) parts.push(el("span", "reply", row.reply));
    k.result.replaceChildren(...parts);
    row.tr.dataset.result = row.result;
    applyFilter(row);
  }

  function badge(h) {
    const code = h.code || "";
    const b = el("span", "badge code-" + (CODES.has(code) ? code : "other"), (h.plugin || "server") + " " + code);
    b.dataset.code = code;
    const title = [];
    if (h.hook) title.push("hook " + h.hook);
    if (h.rcpt) title.push(h.rcpt);
    if (h.reply) title.push(h.reply);
    if (h.duration_ns) title.push(fmtDuration(h.duration_ns));
    b.title = title.join(" · ");
    return b;
  }

  function matches(row) {
    const info = row.info || {};
    if (fListener.value && info.listener !== fListener.value) return false;
    const ip = fClient.value.trim();
    if (ip && !host(info.remote).includes(ip)) return false;
    if (fResult.value && row.result !== fResult.value) return false;
    return true;
  }

  function applyFilter(row) {
    row.tr.hidden = !matches(row);
  }

  function refreshCounts() {
    let shown = 0;
    for (const r of rows) if (!r.tr.hidden) shown++;
    $("shown").textContent = rows.length ? `${shown} of ${rows.length} shown` : "";
    $("empty").hidden = rows.length > 0;
    $("lost").textContent = lost ? `${lost} events missed (the page fell behind)` : "";
  }

  function filterAll() {
    rows.forEach(applyFilter);
    refreshCounts();
  }

  function reset() {
    conns = new Map();
    byTx = new Map();
    rows = [];
    tbody.replaceChildren();
    lastSeq = 0;
    lost = 0;
  }

  function connectionInfo(ev, field, value) {
    const c = connOf(ev);
    c.info[field] = value;
    const row = c.current || newRow(c, ev.conn, "", ev.time);
    render(row);
  }

  function handle(ev) {
    switch (ev.kind) {
      case "connect": {
        const c = connOf(ev);
        if (!c.current) render(newRow(c, ev.conn, "", ev.time));
        break;
      }
      case "helo":
        connectionInfo(ev, "helo", ev.helo);
        break;
      case "tls":
        connectionInfo(ev, "tls", ev.tls);
        break;
      case "auth":
        connectionInfo(ev, "user", ev.user);
        break;
      case "mail": {
        const row = rowFor(ev, true);
        row.sender = ev.sender || "";
        render(row);
        break;
      }
      case "rcpt": {
        const row = rowFor(ev, false);
        if (ev.rcpt && !row.rcpts.includes(ev.rcpt)) row.rcpts.push(ev.rcpt);
        render(row);
        break;
      }
      case "hook": {
        const row = rowFor(ev, false);
        if (ev.rcpt && (ev.code || "").startsWith("DENY") && !row.refused.includes(ev.rcpt)) row.refused.push(ev.rcpt);
        row.hooks.push({ hook: ev.hook, plugin: ev.plugin, code: ev.code, reply: ev.reply, rcpt: ev.rcpt, duration_ns: ev.duration_ns });
        render(row);
        break;
      }
      case "queued": {
        const row = rowFor(ev, false);
        row.queueId = ev.queue_id || "";
        render(row);
        break;
      }
      case "tx_end": {
        const row = rowFor(ev, false);
        row.result = ev.result || "closed";
        row.reply = ev.reply || "";
        if (ev.rcpts && ev.rcpts.length) row.rcpts = ev.rcpts.slice();
        render(row);
        break;
      }
      case "disconnect": {
        const c = conns.get(ev.conn);
        if (!c) break;
        for (const row of c.rows) {
          if (row.result !== "open") continue;
          // Refused before any transaction ended (at connect, HELO, MAIL):
          // the last refusal says how.
          const denial = lastDenial(row);
          if (denial) {
            refusedBy(row, denial);
          } else {
            row.result = row.sender !== null ? "aborted" : "closed";
          }
          render(row);
        }
        conns.delete(ev.conn);
        break;
      }
    }
  }

  // The last decision of the row that refused something.
  function lastDenial(row) {
    return row.hooks.filter((h) => (h.code || "").startsWith("DENY")).pop();
  }

  // Marks the row refused (or deferred) as the decision h says.
  function refusedBy(row, h) {
    row.result = h.code.startsWith("DENYSOFT") ? "deferred" : "refused";
    row.reply = h.reply || row.reply;
  }

  function onMessage(msg) {
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch (e) {
      return;
    }
    if (justOpened) {
      justOpened = false;
      if (lastSeq && ev.seq <= lastSeq) reset(); // the server restarted
    }
    if (ev.seq <= lastSeq) return;
    if (lastSeq && ev.seq > lastSeq + 1) lost += ev.seq - lastSeq - 1;
    lastSeq = ev.seq;
    handle(ev);
    refreshCounts();
  }

  function setStatus(cls, text) {
    const s = $("status");
    s.className = cls;
    s.textContent = text;
  }

  function connect() {
    const es = new EventSource(feed("/watch/events"));
    es.onopen = () => {
      justOpened = true;
      setStatus("status-live", "live");
    };
    es.onmessage = onMessage;
    es.onerror = () => {
      setStatus(es.readyState === EventSource.CLOSED ? "status-down" : "status-connecting",
        es.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
    };
  }

  function fmtDuration(ns) {
    if (!ns) return "0";
    if (ns < 1e3) return ns + " ns";
    if (ns < 1e6) return (ns / 1e3).toFixed(1) + " µs";
    if (ns < 1e9) return (ns / 1e6).toFixed(2) + " ms";
    return (ns / 1e9).toFixed(2) + " s";
  }

  function renderStats(s) {
    const body = $("latency-rows");
    const list = (s.plugins || []).slice().sort((a, b) => (b.p99_ns || 0) - (a.p99_ns || 0));
    body.replaceChildren(...list.map((l) => {
      const tr = el("tr");
      tr.append(el("td", null, l.name), el("td", null, l.count || 0), el("td", null, fmtDuration(l.mean_ns)),
        el("td", null, fmtDuration(l.p50_ns)), el("td", null, fmtDuration(l.p99_ns)), el("td", null, fmtDuration(l.max_ns)));
      return tr;
    }));
    const parts = [];
    if (s.connections_open !== undefined) parts.push(`${s.connections_open} open`);
    if (s.connections_total !== undefined) parts.push(`${s.connections_total} connections`);
    if (s.transactions !== undefined) parts.push(`${s.transactions} transactions`);
    const started = new Date(s.started);
    if (!isNaN(started) && started.getFullYear() > 1) parts.push("since " + started.toLocaleString());
    $("summary").textContent = parts.join(" · ");
  }

  async function pollStats() {
    const err = $("stats-error");
    try {
      const r = await fetch(feed("/watch/stats"), { cache: "no-store" });
      if (!r.ok) throw new Error(`/watch/stats answered ${r.status}`);
      renderStats(await r.json());
      err.hidden = true;
    } catch (e) {
      err.textContent = "The figures could not be read: " + e.message;
      err.hidden = false;
    }
  }

  for (const f of [fListener, fResult]) f.addEventListener("change", filterAll);
  fClient.addEventListener("input", filterAll);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  refreshCounts();
  connect();
  pollStats();
  setInterval(pollStats, STATS_EVERY);
})();
