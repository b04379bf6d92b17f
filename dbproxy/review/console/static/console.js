// dbproxy review console: follow the queue live (server-sent events). Text is only ever set as
// text; the queue rows come as HTML from the server, which escaped every value in them.
(function () {
  "use strict";
  if (!window.EventSource) return;
  var rows = document.querySelector("[data-live]");
  var tx = document.querySelector("[data-tx]");
  if (!rows && !tx) return;
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
        var doc = new DOMParser().parseFromString("<table><tbody>" + html + "</tbody></table>", "text/html");
        rows.replaceChildren.apply(rows, Array.prototype.slice.call(doc.querySelector("tbody").childNodes));
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
    if (tx && String(event.id) === tx.getAttribute("data-tx") && event.kind === "decided"
        && tx.getAttribute("data-outcome") !== event.outcome) {
      var note = document.getElementById("decided-elsewhere");
      note.textContent = "#" + event.id + " was just " + event.outcome + (event.decided_by ? " by " + event.decided_by : "")
        + ". Reload to see it.";
      note.hidden = false;
    }
  };
})();
