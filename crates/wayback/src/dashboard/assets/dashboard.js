// Wayback dashboard: polls the broker's JSON for this instance and draws it. No framework, no
// download from anywhere but the broker, no inline script or style (the page's CSP forbids them).
(function () {
  "use strict";

  var POLL_MS = 5000;          // samples and the blocking tree
  var FULL_MS = 60000;         // the whole document, with the health checks
  var STOPPED_POLL_MS = 30000; // a stopped instance: reading its record never wakes it
  var HOUR = 3600;
  var SVGNS = "http://www.w3.org/2000/svg";
  var LAYERS = ["active", "idle_in_transaction", "idle_in_transaction_aborted", "other", "idle"];
  var LAYER_NAMES = {
    active: "Active", idle: "Idle", idle_in_transaction: "Idle in transaction",
    idle_in_transaction_aborted: "Idle in transaction (aborted)", other: "Other"
  };

  var id = document.body.getAttribute("data-instance");
  var base = "/dashboard/instances/" + encodeURIComponent(id);
  var st = {
    doc: null, series: emptySeries(), lastFull: 0, timer: null, range: 0, cursor: null,
    failures: 0, ended: false, checks: null, statements: null
  };

  // ---------- small helpers ----------
  function $(x) { return document.getElementById(x); }
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }
  function sv(tag, attrs, kids) {
    var e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    append(e, kids);
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : String(v));
    });
  }
  function append(e, kids) {
    if (kids === null || kids === undefined) return;
    if (!Array.isArray(kids)) kids = [kids];
    kids.forEach(function (k) {
      if (k === null || k === undefined || k === false) return;
      e.appendChild(typeof k === "string" || typeof k === "number" ? document.createTextNode(String(k)) : k);
    });
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function title(text) { return sv("title", { text: text }); }
  function secs(iso) { return iso ? Math.floor(Date.parse(iso) / 1000) : null; }
  function nowSecs() { return Math.floor(Date.now() / 1000); }
  function rfc3339(t) { return new Date(t * 1000).toISOString().replace(/\.\d{3}Z$/, "Z"); }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function local(t, withDate) {
    var d = new Date(t * 1000);
    var hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (!withDate) return hm;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + hm + ":" + pad(d.getSeconds());
  }
  function ago(t) {
    if (t === null) return "never";
    var s = Math.max(0, nowSecs() - t);
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
    return Math.floor(s / 86400) + " days ago";
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return s.toFixed(1) + " s";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return Math.floor(s / 86400) + " days " + Math.floor((s % 86400) / 3600) + " h";
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + u[i];
  }
  function ms(x) { return x < 1000 ? x.toFixed(x < 10 ? 2 : 0) + " ms" : (x / 1000).toFixed(1) + " s"; }
  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
  function emptySeries() {
    return { t: [], active: [], idle: [], idle_in_transaction: [], idle_in_transaction_aborted: [],
      other: [], lock_waiters: [], longest_transaction_secs: [], longest_idle_in_transaction_secs: [] };
  }
  function shellQuote(s) { return "'" + s.replace(/'/g, "'\\''") + "'"; }
  function cfArg(s) { return /^[A-Za-z0-9._\-]+$/.test(s) ? s : shellQuote(s); }

  // ---------- polling ----------
  function stopped() { return st.doc && st.doc.status && st.doc.status.state === "stopped"; }
  function live() { return st.doc && st.doc.instance && st.doc.instance.state === "live"; }

  function schedule() {
    clearTimeout(st.timer);
    if (st.ended) return;
    if (document.hidden) { refreshText("paused", "Paused while this tab is hidden"); return; }
    var wait = st.failures ? Math.min(60000, POLL_MS * Math.pow(2, st.failures)) : stopped() || (st.doc && !live()) ? STOPPED_POLL_MS : POLL_MS;
    st.timer = setTimeout(poll, wait);
  }

  function poll() {
    var full = !st.doc || Date.now() - st.lastFull >= FULL_MS;
    var url = base + "/data";
    var last = st.series.t.length ? st.series.t[st.series.t.length - 1] : null;
    if (!full && last !== null) url += "?since=" + encodeURIComponent(rfc3339(last));
    fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401 || r.status === 403) {
          st.ended = true;
          notice("warn", ["Your session has ended.", "Reload the page to sign in again."]);
          refreshText("error", "Signed out");
          return null;
        }
        if (!r.ok) throw new Error("the broker answered " + r.status);
        return r.json();
      })
      .then(function (doc) {
        if (!doc) return;
        st.failures = 0;
        accept(doc, full);
        render();
        schedule();
      })
      .catch(function (e) {
        st.failures++;
        refreshText("error", "Cannot reach the broker (" + e.message + "); retrying");
        schedule();
      });
  }

  function accept(doc, full) {
    if (full) {
      st.lastFull = Date.now();
      st.series = emptySeries();
    }
    var s = doc.activity && doc.activity.series;
    if (s && s.t) {
      var last = st.series.t.length ? st.series.t[st.series.t.length - 1] : -Infinity;
      for (var i = 0; i < s.t.length; i++) {
        if (s.t[i] <= last) continue;
        Object.keys(st.series).forEach(function (k) { st.series[k].push(s[k] ? s[k][i] : 0); });
      }
      var cut = nowSecs() - HOUR, drop = 0;
      while (drop < st.series.t.length && st.series.t[drop] < cut) drop++;
      if (drop) Object.keys(st.series).forEach(function (k) { st.series[k].splice(0, drop); });
    }
    if (doc.diagnose) st.checks = doc.diagnose;
    if (doc.statements) st.statements = doc.statements;
    if (!doc.activity) doc.activity = { sampling: false, series: emptySeries(), stats: null };
    if (!doc.activity.stats && st.doc && st.doc.activity) doc.activity.stats = st.doc.activity.stats;
    st.doc = doc;
  }

  function refreshText(kind, text) {
    var r = $("refresh");
    r.className = "refresh " + kind;
    r.textContent = text;
  }

  function notice(kind, lines) {
    var n = $("notice");
    clear(n);
    if (!lines || !lines.length) { n.hidden = true; return; }
    n.className = "notice " + kind;
    lines.forEach(function (l) { n.appendChild(el("p", { text: l })); });
    n.hidden = false;
  }

  // ---------- render ----------
  function render() {
    var d = st.doc, i = d.instance;
    var name = i.name || i.instance_id;
    document.title = name + " · Wayback PostgreSQL";
    $("name").textContent = name;
    renderFacts(d);
    var lines = [];
    if (d.status.detail) lines.push(d.status.label + ". " + d.status.detail);
    if (i.wake_error) lines.push("The last start failed (" + local(secs(i.wake_error.at), true) + "): " + i.wake_error.reason);
    if (i.kept_copy) lines.push("A copy of its data is kept until " + local(secs(i.kept_copy.expires_at), true) + ": a restore from it is fast.");
    notice(d.status.state === "deleted" || d.status.state === "failed" || i.wake_error ? "bad" : d.status.state === "stopped" ? "warn" : "", lines);
    var clock = local(nowSecs()) + ":" + pad(new Date().getSeconds());
    if (stopped()) refreshText("paused", "Stopped when idle · not woken by this page · updated " + clock);
    else if (!live()) refreshText("", d.status.label + " · updated " + clock);
    else refreshText("live", "Live · updated " + clock);
    renderTimeline();
    renderArchive(d);
    renderReplicas(d);
    renderCharts(d);
    renderLocks(d);
    renderChecks();
    renderStatements();
  }

  function renderFacts(d) {
    var i = d.instance, f = clear($("facts"));
    f.appendChild(el("li", { "class": "pill state-" + d.status.state }, d.status.label));
    if (i.plan_name) f.appendChild(el("li", null, ["Plan ", el("b", { text: i.plan_name })]));
    if (i.service_name) f.appendChild(el("li", null, ["Service ", el("b", { text: i.service_name })]));
    f.appendChild(el("li", null, ["Space ", el("b", { text: d.space_name || i.space_guid })]));
    if (i.created_at) f.appendChild(el("li", { "class": "hide-phone" }, ["Created ", el("b", { text: local(secs(i.created_at), true) })]));
  }

  // ---------- the restore timeline ----------
  function windowOf(i) {
    var from = secs(i.restore_window.from);
    var to = i.restore_window.to_now ? nowSecs() : secs(i.restore_window.to);
    return from === null || to === null || to < from ? null : { from: from, to: to };
  }

  function timelineItems(d) {
    var i = d.instance, items = [];
    (i.base_backups || []).forEach(function (b) {
      items.push({ t: secs(b.time), kind: "backup", label: "Base backup " + b.backup_id + " (" + bytes(b.stored_bytes) + " stored)" });
    });
    (d.events || []).forEach(function (e) {
      items.push({ t: secs(e.at), kind: "event", sub: e.kind, label: e.label });
    });
    (i.drills || []).forEach(function (r) {
      var pass = r.result === "passed";
      var t = secs(r.end_time) || secs(r.started);
      items.push({ t: t, kind: pass ? "pass" : "fail",
        label: "Restore drill " + (pass ? "passed" : r.result) + (r.failure ? ": " + r.failure.detail : "") + " (" + duration(r.duration_secs) + ")" });
    });
    return items.filter(function (x) { return x.t !== null; });
  }

  function renderTimeline() {
    var d = st.doc, i = d.instance, box = $("timeline");
    var w = windowOf(i), items = timelineItems(d);
    var names = (i.names || []).map(function (n) { return { t: secs(n.since) || secs(i.created_at), name: n.name }; });
    var end = live() ? nowSecs() : Math.max(w ? w.to : 0, secs(i.deleted_at) || 0, secs(i.created_at) || 0);
    var start = secs(i.created_at) || (w ? w.from : end - HOUR);
    items.forEach(function (x) { start = Math.min(start, x.t); end = Math.max(end, x.t); });
    if (w) start = Math.min(start, w.from);
    if (st.range && end - st.range > start) start = end - st.range;
    // A young instance's history may last seconds: the picture spans it, not a fixed minute.
    var pad0 = Math.max(3, (end - start) * 0.04);
    var t0 = start - pad0, t1 = end + (live() ? pad0 * 0.4 : pad0);

    var W = Math.max(300, box.clientWidth), H = 150, L = 8, R = 8;
    var x = function (t) { return L + (t - t0) / (t1 - t0) * (W - L - R); };
    var tAt = function (px) { return t0 + (px - L) / (W - L - R) * (t1 - t0); };
    var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, "aria-hidden": "true", "data-items": items.length });

    // Grid and axis
    var ticks = timeTicks(t0, t1, W < 600 ? 4 : 8);
    ticks.forEach(function (t) {
      svg.appendChild(sv("line", { "class": "tl-grid", x1: x(t.t), x2: x(t.t), y1: 4, y2: 118 }));
      svg.appendChild(sv("text", { x: x(t.t), y: 136, "text-anchor": "middle", text: t.label }));
    });
    svg.appendChild(sv("line", { "class": "tl-axis", x1: L, x2: W - R, y1: 118, y2: 118 }));

    // Names the instance had
    names.forEach(function (n, k) {
      var a = Math.max(x(n.t), L), b = k + 1 < names.length ? x(names[k + 1].t) : x(secs(i.deleted_at) || end);
      if (b < L || a > W - R) return;
      b = Math.min(b, W - R);
      var g = sv("g", { "class": "tl-name-g" }, [title(n.name + " from " + local(n.t, true))]);
      g.appendChild(sv("rect", { "class": "tl-name", x: a, y: 6, width: Math.max(2, b - a - 2), height: 22, rx: 5 }));
      var room = n.name.length * 7 + 14;
      if (b - a >= room || k + 1 < names.length) {
        var clip = "clip-name-" + k;
        g.appendChild(sv("clipPath", { id: clip }, sv("rect", { x: a, y: 6, width: Math.max(0, b - a - 8), height: 22 })));
        g.appendChild(sv("text", { "class": "tl-name-text", x: a + 7, y: 21, "clip-path": "url(#" + clip + ")", text: n.name }));
      } else if (a - L >= room) {
        // The newest name of a young instance: its span is narrow, so it is named to its left.
        g.appendChild(sv("text", { "class": "tl-name-text", x: a - 5, y: 21, "text-anchor": "end", text: n.name }));
      } else {
        g.appendChild(sv("text", { "class": "tl-name-text", x: b + 5, y: 21, text: n.name }));
      }
      svg.appendChild(g);
    });

    // Restorable window
    if (w) {
      var a = Math.max(x(w.from), L), b = Math.min(x(w.to), W - R);
      // A window of one second (a backup, then the delete) is still one: at least 3 px wide.
      if (b >= a) {
        if (b - a < 3) { a = Math.max(L, Math.min(a, W - R - 3)); b = a + 3; }
        svg.appendChild(sv("rect", { "class": "tl-window", x: a, y: 40, width: b - a, height: 34, rx: 4, "data-from": w.from, "data-to": w.to },
          [title("Restorable from " + local(w.from, true) + " to " + (i.restore_window.to_now ? "now" : local(w.to, true)))]));
      }
    }
    // Base backups, events and drills
    items.forEach(function (it) {
      var px = x(it.t);
      if (px < L - 1 || px > W - R + 1) return;
      if (it.kind === "backup") {
        svg.appendChild(sv("g", { "class": "tl-backup-g" }, [title(it.label + " · " + local(it.t, true)),
          sv("line", { "class": "tl-backup", x1: px, x2: px, y1: 36, y2: 78 }),
          sv("circle", { "class": "tl-backup-dot", cx: px, cy: 36, r: 3 })]));
      } else if (it.kind === "event") {
        svg.appendChild(sv("circle", { "class": "tl-event" + (it.sub === "deprovision" ? " tl-event-delete" : ""), cx: px, cy: 96, r: 6.5, "data-kind": it.sub },
          [title(it.label + " · " + local(it.t, true))]));
      } else {
        svg.appendChild(sv("rect", { "class": it.kind === "pass" ? "tl-drill-pass" : "tl-drill-fail", x: px - 5, y: 91, width: 10, height: 10,
          transform: "rotate(45 " + px + " 96)" }, [title(it.label + " · " + local(it.t, true))]));
      }
    });
    if (live()) {
      var pn = x(nowSecs());
      svg.appendChild(sv("line", { "class": "tl-now", x1: pn, x2: pn, y1: 4, y2: 118 }));
      svg.appendChild(sv("text", { x: pn, y: 148, "text-anchor": "middle", "class": "tl-label", text: "now" }));
    }
    // The picked point
    if (st.cursor !== null && st.cursor >= t0 && st.cursor <= t1) {
      var pc = x(st.cursor);
      svg.appendChild(sv("line", { "class": "tl-cursor", x1: pc, x2: pc, y1: 32, y2: 118 }));
      svg.appendChild(sv("circle", { "class": "tl-cursor-dot", cx: pc, cy: 57, r: 4 }));
    }
    clear(box).appendChild(svg);
    box.setAttribute("aria-label", timelineSummary(i, w, items));

    var pick = function (ev) {
      var rect = svg.getBoundingClientRect();
      var px = (ev.clientX - rect.left) * (W / rect.width);
      var t = Math.round(tAt(px)), snap = null;
      items.forEach(function (it) {
        if (Math.abs(x(it.t) - px) <= 7 && (!snap || Math.abs(x(it.t) - px) < Math.abs(x(snap.t) - px))) snap = it;
      });
      choose(t, snap);
    };
    svg.addEventListener("pointermove", function (ev) { if (ev.pointerType === "mouse") pick(ev); });
    svg.addEventListener("pointerdown", pick);
    box.onkeydown = function (ev) {
      var step = (t1 - t0) / (ev.shiftKey ? 10 : 100), t = st.cursor === null ? (w ? w.to : end) : st.cursor;
      if (ev.key === "ArrowLeft") t -= step; else if (ev.key === "ArrowRight") t += step;
      else if (ev.key === "Home" && w) t = w.from; else if (ev.key === "End" && w) t = w.to;
      else return;
      ev.preventDefault();
      choose(Math.round(t), null);
    };
    $("window-text").textContent = "";
    append($("window-text"), windowText(i, w));
  }

  function timelineSummary(i, w, items) {
    var n = function (k) { return items.filter(function (x) { return x.kind === k; }).length; };
    return "Restore timeline: " + (w ? "restorable from " + local(w.from, true) + " to " + (i.restore_window.to_now ? "now" : local(w.to, true)) : "no restorable window yet") +
      "; " + n("backup") + " base backups, " + n("event") + " events, " + (n("pass") + n("fail")) + " drills. Use the arrow keys to pick a point.";
  }

  function windowText(i, w) {
    if (!w) return ["Nothing can be restored yet: the first base backup is not complete."];
    var span = w.to - w.from;
    return ["Restorable to any second from ", el("b", { text: local(w.from, true) }), " to ",
      el("b", { text: i.restore_window.to_now ? "now" : local(w.to, true) }), " (" + duration(span) + ", " + plural((i.base_backups || []).length, "base backup") + ")."];
  }

  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  function day(d) { return MONTHS[d.getMonth()] + " " + d.getDate(); }
  function timeTicks(t0, t1, n) {
    var steps = [1, 2, 5, 10, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400];
    var span = t1 - t0, step = steps[steps.length - 1];
    for (var k = 0; k < steps.length; k++) if (span / steps[k] <= n) { step = steps[k]; break; }
    var off = new Date().getTimezoneOffset() * 60, out = [];
    for (var t = Math.ceil((t0 - off) / step) * step + off; t <= t1; t += step) {
      var d = new Date(t * 1000);
      var label = step >= 86400 || (step >= 60 && d.getHours() === 0 && d.getMinutes() === 0) ? day(d) : step < 60 ? local(t) + ":" + pad(d.getSeconds()) : local(t);
      out.push({ t: t, label: label });
    }
    return out;
  }

  // A picked point: the restore hint with the exact commands.
  function choose(t, snap) {
    var d = st.doc, i = d.instance, w = windowOf(i);
    var hint = $("hint"), head = $("hint-title"), box = clear($("hint-commands"));
    var point = t, why = "";
    if (snap && snap.kind === "event" && (snap.sub === "deprovision" || snap.sub === "rename" || snap.sub === "update" || snap.sub === "failover")) {
      point = snap.t - 1;
      why = "the second before “" + snap.label + "”";
    } else if (snap) {
      point = snap.t;
      why = snap.label;
    }
    st.cursor = point;
    if (!w || point < w.from || point > w.to) {
      hint.className = "hint";
      head.textContent = local(point, true) + (why ? " · " + why : "") + " — not restorable" +
        (w ? " (the window is " + local(w.from, true) + " – " + (i.restore_window.to_now ? "now" : local(w.to, true)) + ")" : "") + ".";
      renderTimelineCursorOnly();
      return;
    }
    var at = rfc3339(point), src = d.restore_source, name = i.name || src;
    var newName = cfArg((i.name || "restored") + "-restored");
    hint.className = "hint picked";
    head.textContent = "Restore to " + local(point, true) + " (" + at + ")" + (why ? " · " + why : "");
    if (src === i.name) {
      box.appendChild(el("p", { "class": "cmd-label", text: "With the cf-wayback plugin (creates " + name + "-restored):" }));
      box.appendChild(command("cf undo " + cfArg(name) + " --at " + at));
    } else if (i.name) {
      box.appendChild(el("p", { "class": "cmd-label", text: "Another instance has the name " + i.name + " now, so the command names this one by its GUID:" }));
    }
    var params = JSON.stringify({ "clone-from": src, "point-in-time": at });
    box.appendChild(el("p", { "class": "cmd-label", text: "With the cf CLI alone:" }));
    box.appendChild(command("cf create-service " + cfArg(i.service_name || "SERVICE") + " " + cfArg(i.plan_name || "PLAN") + " " + newName + " -c " + shellQuote(params)));
    renderTimelineCursorOnly();
  }

  function renderTimelineCursorOnly() { renderTimeline(); }

  function command(text) {
    var code = el("code", { text: text });
    var button = el("button", { type: "button", text: "Copy", "aria-label": "Copy the command" });
    button.addEventListener("click", function () {
      var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
      var select = function () {
        var range = document.createRange();
        range.selectNodeContents(code);
        var sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      };
      if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, select);
      else select();
    });
    return el("div", { "class": "cmd" }, [code, button]);
  }

  // ---------- archive and replicas ----------
  function renderArchive(d) {
    var i = d.instance, a = i.archive, dl = clear($("archive"));
    var row = function (k, v, small) { dl.appendChild(el("dt", { text: k })); dl.appendChild(el("dd", null, [v, small ? el("small", { text: " " + small }) : null])); };
    row("Health", el("span", { "class": "pill " + (a.healthy ? "ok-text" : "bad-text"), text: a.healthy ? "Healthy" : "Needs attention" }));
    if (a.detail) row("", el("span", { "class": "sub", text: a.detail }));
    var la = secs(a.last_archived_at);
    row("Last archived", ago(la), la ? local(la, true) : "");
    row("WAL waiting", a.lag_segments + (a.lag_segments === 1 ? " segment" : " segments"));
    var lb = secs(i.last_base_backup);
    row("Last base backup", ago(lb), lb ? local(lb, true) : "");
    var stored = (i.base_backups || []).reduce(function (s, b) { return s + (b.stored_bytes || 0); }, 0);
    row("Base backups", String((i.base_backups || []).length), bytes(stored) + " stored");
    var drill = (i.drills || [])[0];
    if (drill) row("Last restore drill", el("span", { "class": drill.result === "passed" ? "ok-text" : "bad-text", text: drill.result === "passed" ? "✓ passed" : "✗ " + drill.result }), ago(secs(drill.started)));
    var s = d.activity && d.activity.stats;
    if (s) {
      row("Database size", bytes(s.database_size_bytes));
      if (s.cache_hit_ratio !== null && s.cache_hit_ratio !== undefined) row("Cache hit ratio", (s.cache_hit_ratio * 100).toFixed(2) + " %");
    }
  }

  function renderReplicas(d) {
    var i = d.instance, box = clear($("replicas"));
    if (i.follower) {
      var f = i.follower;
      box.appendChild(el("p", null, ["Follows ", el("b", { text: f.leader.name || f.leader.id }), " · " + f.state.replace(/_/g, " ") +
        " · lag " + bytes(f.lag_bytes) + (f.lag_seconds !== null && f.lag_seconds !== undefined ? " / " + duration(f.lag_seconds) : "")]));
    }
    if (i.ha && i.ha.members && i.ha.members.length) {
      box.appendChild(table(["Member", "Role", "State", "Lag"], i.ha.members.map(function (m) {
        return [m.name, m.role || "–", m.state || "unknown", { num: m.role === "leader" ? "–" : bytes(m.lag_bytes) }];
      }), "HA members"));
      if (i.ha.last_failover) box.appendChild(el("p", { "class": "sub", text: "Last failover " + (i.ha.last_failover.at ? ago(secs(i.ha.last_failover.at)) : "") + ": " + i.ha.last_failover.reason }));
    }
    if (i.followers && i.followers.length) {
      box.appendChild(table(["Follower", "State", "Lag"], i.followers.map(function (f) {
        return [f.name || f.id, f.state.replace(/_/g, " "), { num: bytes(f.lag_bytes) + (f.lag_seconds !== null && f.lag_seconds !== undefined ? " · " + duration(f.lag_seconds) : "") }];
      }), "Followers"));
    }
    if (!box.firstChild && !live()) {
      box.appendChild(el("p", { "class": "empty", text: "None: only a live instance has followers." }));
    } else if (!box.firstChild) {
      box.appendChild(el("p", { "class": "empty" }, ["No followers or HA members. A read-only follower: ",
        el("code", { text: "cf create-service " + cfArg(i.service_name || "SERVICE") + " " + cfArg(i.plan_name || "PLAN") + " " + cfArg((i.name || "db") + "-ro") + " -c '{\"follow\":\"" + (i.name || i.instance_id) + "\"}'" })]));
    }
  }

  function table(heads, rows, caption) {
    var t = el("table", null, [el("caption", { "class": "sub", text: caption })]);
    t.appendChild(el("thead", null, el("tr", null, heads.map(function (h, k) {
      var numeric = rows.length && rows[0][k] && rows[0][k].num !== undefined;
      return el("th", { scope: "col", "class": numeric ? "num" : null, text: h });
    }))));
    t.appendChild(el("tbody", null, rows.map(function (r) {
      return el("tr", null, r.map(function (c, k) {
        if (c && c.num !== undefined) return el("td", { "class": "num", "data-label": heads[k], text: c.num });
        if (c && c.nodeType) return el("td", { "class": "q" }, c);
        return el("td", { text: c });
      }));
    })));
    return el("div", { "class": "table-wrap" }, t);
  }

  // ---------- charts of the last hour ----------
  function renderCharts(d) {
    var a = d.activity || {}, s = st.series, n = s.t.length;
    var sub = $("activity-sub");
    sub.textContent = a.sampling ? "Sampled every second · " + n + " samples" : (a.note || "Not sampled.");
    var end = n ? Math.max(s.t[n - 1], nowSecs()) : nowSecs(), start = end - HOUR;
    var totals = s.t.map(function (_, k) { return LAYERS.reduce(function (sum, l) { return sum + (s[l][k] || 0); }, 0); });
    stacked($("chart-sessions"), s, start, end, totals);
    var lg = clear($("legend-sessions"));
    LAYERS.forEach(function (l) {
      var now = n ? s[l][n - 1] : 0;
      if (l !== "active" && l !== "idle" && !s[l].some(function (v) { return v > 0; })) return;
      lg.appendChild(el("li", null, [el("span", { "class": "sw sw-" + l }), LAYER_NAMES[l] + " (" + now + ")"]));
    });
    line($("chart-locks"), s, "lock_waiters", start, end, "ch-locks", function (v) { return v + (v === 1 ? " waiter" : " waiters"); }, true);
    line($("chart-xact"), s, "longest_transaction_secs", start, end, "ch-xact", duration, false);
  }

  function niceMax(v) {
    if (v <= 1) return 1;
    var p = Math.pow(10, Math.floor(Math.log10(v))), m = v / p;
    return (m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }

  // Buckets of one pixel column or more: the last value of each (sessions) or the largest.
  function buckets(s, start, end, width, key, maxOf) {
    var n = Math.max(1, Math.min(Math.floor(width / 2), 600)), out = [], size = (end - start) / n;
    var cur = null;
    for (var k = 0; k < s.t.length; k++) {
      if (s.t[k] < start) continue;
      var b = Math.min(n - 1, Math.floor((s.t[k] - start) / size));
      var v = key(k);
      if (!cur || cur.b !== b) { cur = { b: b, t: s.t[k], v: v, k: k }; out.push(cur); }
      else if (maxOf) { if (v > cur.v) cur.v = v; cur.t = s.t[k]; cur.k = k; }
      else { cur.v = v; cur.t = s.t[k]; cur.k = k; }
    }
    return out;
  }

  // Runs of buckets without a gap longer than `gap` seconds.
  function runs(points, gap) {
    var out = [], cur = [];
    points.forEach(function (p, k) {
      if (k && p.t - points[k - 1].t > gap) { out.push(cur); cur = []; }
      cur.push(p);
    });
    if (cur.length) out.push(cur);
    return out;
  }

  function frame(box, start, end, maxY, fmt, points, integer) {
    var W = Math.max(240, box.clientWidth), H = 160, L = 40, R = 6, T = 8, B = 22;
    var svg = sv("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img", "data-points": points });
    var x = function (t) { return L + (t - start) / (end - start) * (W - L - R); };
    var y = function (v) { return T + (1 - v / maxY) * (H - T - B); };
    [0, 0.5, 1].forEach(function (f) {
      svg.appendChild(sv("line", { "class": "ch-grid", x1: L, x2: W - R, y1: y(maxY * f), y2: y(maxY * f) }));
      // A count's half-way line is labelled only when it is a whole number.
      if (f === 0.5 && integer && maxY % 2) return;
      svg.appendChild(sv("text", { x: L - 6, y: y(maxY * f) + 4, "text-anchor": "end", text: fmt(maxY * f) }));
    });
    [60, 45, 30, 15, 0].forEach(function (m) {
      svg.appendChild(sv("text", { x: x(end - m * 60), y: H - 6, "text-anchor": m === 0 ? "end" : "middle", text: m ? "−" + m + " min" : "now" }));
    });
    return { svg: svg, x: x, y: y, W: W, H: H, L: L, R: R, T: T, B: B };
  }

  function emptyNote(f, text) {
    f.svg.appendChild(sv("text", { x: (f.L + f.W - f.R) / 2, y: f.H / 2 - 4, "text-anchor": "middle", text: text }));
  }

  function stacked(box, s, start, end, totals) {
    var pts = buckets(s, start, end, box.clientWidth || 300, function (k) { return totals[k]; }, false);
    var maxY = niceMax(Math.max.apply(null, [2].concat(totals)));
    var f = frame(box, start, end, maxY, function (v) { return String(Math.round(v)); }, pts.length, true);
    if (!pts.length) emptyNote(f, st.doc.activity && st.doc.activity.sampling ? "Waiting for the first samples…" : "No samples");
    runs(pts, 5 * Math.max(1, (end - start) / 300)).forEach(function (run) {
      var below = run.map(function () { return 0; });
      LAYERS.forEach(function (l) {
        var above = run.map(function (p, k) { return below[k] + (s[l][p.k] || 0); });
        if (!above.some(function (v, k) { return v > below[k]; })) { below = above; return; }
        var dPath = "";
        run.forEach(function (p, k) { dPath += (k ? "L" : "M") + f.x(p.t).toFixed(1) + " " + f.y(above[k]).toFixed(1); });
        if (run.length === 1) dPath += "L" + (f.x(run[0].t) + 2).toFixed(1) + " " + f.y(above[0]).toFixed(1);
        for (var k = run.length - 1; k >= 0; k--) dPath += "L" + f.x(run[k].t).toFixed(1) + " " + f.y(below[k]).toFixed(1);
        if (run.length === 1) dPath += "L" + (f.x(run[0].t) + 2).toFixed(1) + " " + f.y(below[0]).toFixed(1);
        f.svg.appendChild(sv("path", { "class": "ch-" + l, d: dPath + "Z" }));
        below = above;
      });
    });
    var n = s.t.length;
    f.svg.setAttribute("aria-label", n ? "Sessions now: " + LAYERS.map(function (l) { return s[l][n - 1] + " " + LAYER_NAMES[l].toLowerCase(); }).join(", ") : "No session samples");
    hover(box, f, s, start, end, function (k) {
      return local(s.t[k]) + ":" + pad(new Date(s.t[k] * 1000).getSeconds()) + " · " + LAYERS.filter(function (l) { return s[l][k]; }).map(function (l) { return LAYER_NAMES[l] + " " + s[l][k]; }).join(", ");
    });
  }

  function line(box, s, key, start, end, cls, fmt, integer) {
    var pts = buckets(s, start, end, box.clientWidth || 300, function (k) { return s[key][k] || 0; }, true);
    var maxY = niceMax(Math.max.apply(null, [integer ? 2 : 1].concat(s[key])));
    var f = frame(box, start, end, maxY, integer ? function (v) { return String(Math.round(v)); } : duration, pts.length, integer);
    if (!pts.length) emptyNote(f, "No samples");
    runs(pts, 5 * Math.max(1, (end - start) / 300)).forEach(function (run) {
      var dPath = "";
      run.forEach(function (p, k) { dPath += (k ? "L" : "M") + f.x(p.t).toFixed(1) + " " + f.y(p.v).toFixed(1); });
      if (run.length === 1) dPath += "L" + (f.x(run[0].t) + 2).toFixed(1) + " " + f.y(run[0].v).toFixed(1);
      var last = run[run.length - 1], first = run[0];
      var area = dPath + "L" + f.x(last.t).toFixed(1) + " " + f.y(0) + "L" + f.x(first.t).toFixed(1) + " " + f.y(0) + "Z";
      f.svg.appendChild(sv("path", { "class": cls, d: area }));
    });
    var n = s.t.length, cap = box.parentNode.querySelector("figcaption");
    var now = cap.querySelector(".now") || cap.appendChild(el("span", { "class": "now" }));
    now.textContent = n ? "now " + fmt(s[key][n - 1]) : "";
    f.svg.setAttribute("aria-label", cap.firstChild.textContent + ": " + (n ? "now " + fmt(s[key][n - 1]) + ", highest in the hour " + fmt(Math.max.apply(null, s[key])) : "no samples"));
    hover(box, f, s, start, end, function (k) { return local(s.t[k]) + ":" + pad(new Date(s.t[k] * 1000).getSeconds()) + " · " + fmt(s[key][k]); });
  }

  function hover(box, f, s, start, end, text) {
    var tip = el("div", { "class": "tip", hidden: true });
    var cursor = sv("line", { "class": "ch-cursor", y1: f.T, y2: f.H - f.B, x1: 0, x2: 0, visibility: "hidden" });
    f.svg.appendChild(cursor);
    var show = function (ev) {
      if (!s.t.length) return;
      var rect = f.svg.getBoundingClientRect();
      var px = (ev.clientX - rect.left) * (f.W / rect.width);
      var t = start + (px - f.L) / (f.W - f.L - f.R) * (end - start);
      var k = nearest(s.t, t);
      if (k < 0 || Math.abs(s.t[k] - t) > 30) { tip.hidden = true; return; }
      var cx = f.x(s.t[k]);
      cursor.setAttribute("x1", cx); cursor.setAttribute("x2", cx); cursor.setAttribute("visibility", "visible");
      tip.textContent = text(k);
      tip.hidden = false;
      var left = cx * rect.width / f.W;
      tip.style.left = Math.max(0, Math.min(rect.width - tip.offsetWidth, left - tip.offsetWidth / 2)) + "px";
      tip.style.top = "-6px";
    };
    f.svg.addEventListener("pointermove", show);
    f.svg.addEventListener("pointerdown", show);
    f.svg.addEventListener("pointerleave", function () { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); });
    clear(box);
    box.appendChild(f.svg);
    box.appendChild(tip);
  }

  function nearest(ts, t) {
    var lo = 0, hi = ts.length - 1;
    if (hi < 0) return -1;
    while (lo < hi) { var mid = (lo + hi) >> 1; if (ts[mid] < t) lo = mid + 1; else hi = mid; }
    if (lo > 0 && Math.abs(ts[lo - 1] - t) < Math.abs(ts[lo] - t)) lo--;
    return lo;
  }

  // ---------- blocking tree, checks, statements ----------
  function renderLocks(d) {
    var box = clear($("locks")), l = d.locks;
    if (!l) { box.appendChild(el("p", { "class": "empty", text: stopped() ? "Stopped when idle: nothing runs." : "Only a running instance has locks." })); return; }
    if (l.note) box.appendChild(el("p", { "class": "sub", text: l.note }));
    if (!l.roots || !l.roots.length) { if (!l.note) box.appendChild(el("p", { "class": "ok-line", text: "Nobody waits for a lock." })); return; }
    var tree = function (nodes) {
      return el("ul", null, nodes.map(function (nd) {
        var w = nd.waiting_for;
        return el("li", null, [el("div", { "class": "node" }, [
          el("span", { "class": "who", text: "pid " + nd.pid + (nd.user ? " · " + nd.user : "") + (nd.database ? "@" + nd.database : "") }),
          el("span", { "class": "sub", text: " " + (nd.state || "") + (nd.transaction_secs !== null && nd.transaction_secs !== undefined ? " · transaction " + duration(nd.transaction_secs) : "") }),
          w ? el("div", { "class": "why", text: "waits " + duration(w.waiting_secs) + " for " + w.mode + " (" + w.lock_type + ")" + (w.relation ? " on " + w.relation : "") }) : null,
          nd.query ? el("code", { text: nd.query }) : null
        ]), nd.blocking && nd.blocking.length ? tree(nd.blocking) : null]);
      }));
    };
    var t = tree(l.roots);
    t.className = "tree";
    t.setAttribute("aria-label", "Sessions that block others, and who waits for them");
    box.appendChild(t);
  }

  function renderChecks() {
    var box = clear($("checks")), c = st.checks;
    if (!c) { box.appendChild(el("li", { "class": "empty", text: "Loading…" })); return; }
    if (c.note) box.appendChild(el("li", null, [el("span", { "class": "badge", text: "N/A" }), el("span", { "class": "sub", text: c.note })]));
    (c.checks || []).forEach(function (k) {
      var v = typeof k.verdict === "string" ? k.verdict : "SKIPPED";
      box.appendChild(el("li", { "data-verdict": v }, [
        el("span", { "class": "badge " + v, text: v }),
        el("span", { "class": "check-title", text: k.title || k.name }),
        el("span", { "class": "check-sum", text: k.summary }),
        k.advice && v !== "GREEN" ? el("span", { "class": "check-advice", text: k.advice }) : null
      ]));
    });
  }

  function renderStatements() {
    var box = clear($("queries")), s = st.statements;
    if (!s) { box.appendChild(el("p", { "class": "empty", text: live() && !stopped() ? "Loading…" : "Only a running instance has statements to show." })); return; }
    if (s.note) box.appendChild(el("p", { "class": "sub", text: s.note }));
    var list = s.statements || [];
    if (!list.length) { if (!s.note) box.appendChild(el("p", { "class": "empty", text: "No statements recorded yet." })); return; }
    box.appendChild(table(["Query", "Calls", "Total", "Mean", "Rows"], list.map(function (q) {
      var bar = el("span", { "class": "share" }, el("span"));
      bar.firstChild.style.width = Math.max(1, Math.round((q.share || 0) * 100)) + "%";
      return [el("div", null, [el("code", { text: q.query }), bar, el("span", { "class": "sub", text: Math.round((q.share || 0) * 100) + " % of all time" + (q.database ? " · " + q.database : "") })]),
        { num: String(q.calls) }, { num: ms(q.total_exec_ms) }, { num: ms(q.mean_exec_ms) }, { num: String(q.rows) }];
    }), "Normalised statements from pg_stat_statements (constants shown as $1, $2, …)"));
  }

  // ---------- wiring ----------
  Array.prototype.forEach.call(document.querySelectorAll(".range button"), function (b) {
    b.addEventListener("click", function () {
      st.range = Number(b.getAttribute("data-range"));
      Array.prototype.forEach.call(document.querySelectorAll(".range button"), function (o) { o.setAttribute("aria-pressed", String(o === b)); });
      if (st.doc) renderTimeline();
    });
  });
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { clearTimeout(st.timer); refreshText("paused", "Paused while this tab is hidden"); }
    else if (!st.ended) poll();
  });
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { if (st.doc) render(); }, 150);
  });
  poll();
})();
