// dbproxy review console: follow the proxy live (server-sent events). Text is only ever set as
// text; the rows of a live list come as HTML from the server, which escaped every value in them.
//
// - [data-live]: a list refreshed from its URL after each event. With data-keyed, items still
//   there keep their own elements (a reason being typed into a form stays), new ones are added
//   and gone ones removed.
// - [data-tx]: a transaction's page says when someone else decided it.
// - [data-stale-on="kind ..."]: shown when an event of one of those kinds arrives.
// - #nav-waiting: the navigation's count of requests waiting for approval.
(function () {
  "use strict";
  if (!window.EventSource) return;
  var rows = document.querySelector("[data-live]");
  var tx = document.querySelector("[data-tx]");
  var stale = document.querySelector("[data-stale-on]");
  var count = document.getElementById("nav-waiting");
  if (!rows && !tx && !stale && !count) return;
  var live = document.getElementById("live");
  var pending = null;

  function refresh() {
    pending = null;
    fetch(rows.getAttribute("data-live"), { credentials: "same-origin", redirect: "error" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) return;
        var table = rows.tagName === "TBODY";
        var doc = new DOMParser().parseFromString(
          table ? "<table><tbody>" + html + "</tbody></table>" : "<div>" + html + "</div>", "text/html");
        var fresh = Array.prototype.slice.call(doc.querySelector(table ? "tbody" : "div").childNodes);
        if (rows.hasAttribute("data-keyed")) {
          var kept = {};
          Array.prototype.forEach.call(rows.children, function (el) {
            var id = el.getAttribute("data-id");
            if (id) kept[id] = el;
          });
          fresh = fresh.map(function (node) {
            var id = node.nodeType === 1 ? node.getAttribute("data-id") : null;
            return id && kept[id] ? kept[id] : node;
          });
        }
        rows.replaceChildren.apply(rows, fresh);
      })
      .catch(function () {});
  }

  var source = new EventSource("/console/events");
  source.onopen = function () {
    document.body.setAttribute("data-live", "on");
    if (live) live.setAttribute("data-state", "on");
  };
  source.onerror = function () {
    document.body.setAttribute("data-live", "off");
    if (live) live.setAttribute("data-state", "off");
    if (source.readyState === EventSource.CLOSED) window.location.reload();  // signed out: sign-in page
  };
  source.onmessage = function (message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    if (rows && pending === null) pending = window.setTimeout(refresh, 150);
    if (count && typeof event.waiting === "number") {
      count.textContent = String(event.waiting);
      count.setAttribute("data-count", String(event.waiting));
    }
    if (stale && stale.getAttribute("data-stale-on").split(" ").indexOf(event.kind) >= 0) stale.hidden = false;
    if (tx && String(event.id) === tx.getAttribute("data-tx") && event.kind === "decided"
        && tx.getAttribute("data-outcome") !== event.outcome) {
      var note = document.getElementById("decided-elsewhere");
      note.textContent = "#" + event.id + " was just " + event.outcome + (event.decided_by ? " by " + event.decided_by : "")
        + ". Reload to see it.";
      note.hidden = false;
    }
  };
})();
