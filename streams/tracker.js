/*
 * leadpulse browser tracker, served by the collector at /v1/tracker.js. No dependencies, no build step.
 *
 *   <script async src="https://COLLECTOR/v1/tracker.js" data-write-key="PUBLIC_WRITE_KEY"></script>
 *
 * Sends to the collector the script came from (override with data-endpoint or window.leadpulseConfig):
 * - web_visit on load: url, referrer, utm_* from the URL, page_category from
 *   <meta name="leadpulse:page-category" content="pricing"> or data-lp-page-category on <html>/<body>;
 * - email_click on load when the URL carries lp_campaign_id and lp_email_id (links in marketing emails);
 * - content_view per element with data-lp-content-id (and data-lp-content-type): dwell ms while visible,
 *   percent of the element scrolled into view, sent each time the page is hidden (the dwell since the last
 *   report); a page load's web_visit and content_view reports share a page_view_id, so reports and scoring
 *   count the view once however many times the reader switched tabs;
 * - download on click of a link with data-lp-download (data-lp-content-id, data-lp-asset-type).
 * Events are batched (20 or 5 s) and sent with navigator.sendBeacon (falls back to fetch keepalive) as
 * text/plain JSON, a CORS-safelisted type, so no preflight is needed. sendBeacon cannot set headers, so the
 * (public) write key travels in the body. Every event gets an event_id here: the collector and the
 * pipeline drop duplicates by it. Errors are swallowed: the tracker must never break or block the page.
 */
(function (w, d) {
  "use strict";
  if (w.__leadpulseLoaded) return;
  w.__leadpulseLoaded = true;

  var script = d.currentScript || d.querySelector("script[data-write-key]");
  var cfg = w.leadpulseConfig || {};
  var attr = function (name) { return script ? script.getAttribute(name) : null; };
  var writeKey = cfg.writeKey || attr("data-write-key");
  var endpoint = cfg.endpoint || attr("data-endpoint") ||
    (script && script.src ? new URL(script.src, w.location.href).origin : "") + "/v1/events";
  var FLUSH_MS = cfg.flushIntervalMs || 5000;
  var MAX_BATCH = 20;
  var YEAR_S = 365 * 24 * 3600;
  var queue = [];

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    var b = new Uint8Array(16);
    w.crypto.getRandomValues(b);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function cookie(name, value) {
    if (value === undefined) {
      var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
      return m ? decodeURIComponent(m[1]) : null;
    }
    d.cookie = name + "=" + encodeURIComponent(value) + "; Max-Age=" + YEAR_S + "; Path=/; SameSite=Lax" +
      (w.location.protocol === "https:" ? "; Secure" : "");
    return value;
  }

  var anonymousId = cookie("lp_aid", cookie("lp_aid") || uuid());  // refreshes the expiry on every visit
  var leadId = cookie("lp_lid");
  var pageViewId = uuid();  // this page load; page() starts a new one (a single-page app's route change)
  var pageCalls = 0;

  function send(body) {
    try {
      if (w.navigator.sendBeacon && w.navigator.sendBeacon(endpoint, body)) return;
    } catch (e) { /* fall through to fetch */ }
    try {
      w.fetch(endpoint, { method: "POST", body: body, keepalive: true, mode: "cors", credentials: "omit",
        headers: { "Content-Type": "text/plain;charset=UTF-8" } }).catch(function () {});
    } catch (e) { /* never break the page */ }
  }

  function flush() {
    while (queue.length) {
      send(JSON.stringify({ write_key: writeKey, sent_at: Date.now(), batch: queue.splice(0, MAX_BATCH) }));
    }
  }

  function track(type, props) {
    var event = { type: type, event_id: uuid(), event_time: Date.now(), anonymous_id: anonymousId,
      lead_id: leadId };
    for (var k in props) if (Object.prototype.hasOwnProperty.call(props, k)) event[k] = props[k];
    queue.push(event);
    if (queue.length >= MAX_BATCH) flush();
  }

  function identify(id, traits) {
    leadId = cookie("lp_lid", String(id));
    track("lead_identified", traits || {});
    flush();
  }

  function pageCategory() {
    var meta = d.querySelector('meta[name="leadpulse:page-category"]');
    if (meta && meta.content) return meta.content;
    var el = d.querySelector("[data-lp-page-category]");
    return el ? el.getAttribute("data-lp-page-category") : null;
  }

  function page() {
    if (pageCalls++) {  // a route change: what was read so far belongs to the page view it ends
      reportContent();
      pageViewId = uuid();
    }
    var q = new URLSearchParams(w.location.search);
    var props = { url: w.location.href, referrer: d.referrer || null, page_category: pageCategory(),
      page_view_id: pageViewId };
    ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"].forEach(function (p) {
      props[p] = q.get(p);
    });
    track("web_visit", props);
    if (q.get("lp_campaign_id") && q.get("lp_email_id")) {
      track("email_click", { campaign_id: q.get("lp_campaign_id"), email_id: q.get("lp_email_id"),
        link_url: w.location.href });
    }
  }

  // --- content views: dwell while at least 1 px is visible and the tab is visible; max depth scrolled ---
  var watched = [];
  // the collector refuses a view of more than a day (schemas/domain_rules.py MAX_DWELL_MS): a tab left in
  // view over a weekend, or a wall display, is reported as one day, not lost (sendBeacon reads no answer)
  var MAX_DWELL_MS = 86400000;

  function depth(el) {
    var r = el.getBoundingClientRect();
    if (r.height <= 0) return 0;
    var seen = (w.innerHeight - r.top) / r.height * 100;
    return Math.max(0, Math.min(100, seen));
  }

  function tick(now) {
    watched.forEach(function (s) {
      if (s.since !== null) { s.dwell += now - s.since; s.since = d.visibilityState === "visible" ? now : null; }
      if (s.visible) s.pct = Math.max(s.pct, depth(s.el));
    });
  }

  function watchContent() {
    var els = d.querySelectorAll("[data-lp-content-id]:not([data-lp-download])");
    if (!els.length || !w.IntersectionObserver) return;
    var io = new w.IntersectionObserver(function (entries) {
      var now = Date.now();
      tick(now);
      entries.forEach(function (entry) {
        var s = entry.target.__lp;
        s.visible = entry.isIntersecting;
        s.since = s.visible && d.visibilityState === "visible" ? now : null;
        if (s.visible) s.pct = Math.max(s.pct, depth(s.el));
      });
    }, { threshold: [0, 0.25, 0.5, 0.75, 1] });
    Array.prototype.forEach.call(els, function (el) {
      el.__lp = { el: el, visible: false, since: null, dwell: 0, pct: 0 };
      watched.push(el.__lp);
      io.observe(el);
    });
    w.addEventListener("scroll", function () { tick(Date.now()); }, { passive: true });
  }

  function reportContent() {
    var now = Date.now();
    tick(now);
    watched.forEach(function (s) {
      if (s.dwell <= 0) return;
      track("content_view", { content_id: s.el.getAttribute("data-lp-content-id"),
        content_type: s.el.getAttribute("data-lp-content-type") || "page", dwell_ms: Math.min(Math.round(s.dwell), MAX_DWELL_MS),
        percent_viewed: Math.round(s.pct * 10) / 10, channel: "web", page_view_id: pageViewId });
      s.dwell = 0;  // the next report carries only new dwell time
    });
  }

  function onHide() {
    reportContent();
    flush();
  }

  function onVisibility() {
    if (d.visibilityState === "hidden") { onHide(); return; }
    var now = Date.now();
    watched.forEach(function (s) { if (s.visible) s.since = now; });
  }

  d.addEventListener("click", function (e) {
    var el = e.target && e.target.closest ? e.target.closest("[data-lp-download]") : null;
    if (!el) return;
    track("download", { content_id: el.getAttribute("data-lp-content-id") || el.getAttribute("href") || "unknown",
      asset_type: el.getAttribute("data-lp-asset-type") || "file" });
    flush();  // the click may navigate away
  }, true);
  d.addEventListener("visibilitychange", onVisibility);
  w.addEventListener("pagehide", onHide);
  w.setInterval(flush, FLUSH_MS);

  var api = { track: track, identify: identify, page: page, flush: flush,
    anonymousId: function () { return anonymousId; } };
  var pending = Array.isArray(w.leadpulse) ? w.leadpulse : [];
  w.leadpulse = api;
  page();
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", watchContent); else watchContent();
  pending.forEach(function (call) { if (api[call[0]]) api[call[0]].apply(null, call.slice(1)); });
})(window, document);
