// msfleet dashboard: times in the browser's zone, and a running job's events
// as they become durable (server-sent events; the page works without this).
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[data-ms], text[data-ms]").forEach(function (t) {
      var ms = Number(t.getAttribute("data-ms"));
      if (ms > 0) t.textContent = new Date(ms).toLocaleString();
    });
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
  }
  function follow(job) {
    var id = job.getAttribute("data-id");
    var after = job.getAttribute("data-seq");
    var attempt = Number(job.getAttribute("data-attempt"));
    var results = document.querySelector("#results tbody");
    var log = document.getElementById("log");
    var source = new EventSource("/jobs/" + encodeURIComponent(id) + "/events?after=" + after);
    source.onmessage = function (m) {
      var ev = JSON.parse(m.data);
      job.setAttribute("data-seq", String(ev.seq));
      if (ev.attempt > attempt) {
        attempt = ev.attempt;
        results.textContent = "";
        log.textContent = "";
        document.getElementById("attempts").textContent = String(attempt);
      }
      if (ev.kind === "test") {
        var tr = document.createElement("tr");
        tr.className = "result outcome-" + ev.outcome;
        cell(tr, ev.nodeid, "nodeid"); cell(tr, ev.when); cell(tr, ev.outcome);
        cell(tr, Number(ev.duration_s).toFixed(2), "num");
        results.appendChild(tr);
        Object.keys(ev.counts).forEach(function (k) {
          var b = document.getElementById("c-" + k);
          if (b) b.textContent = String(ev.counts[k]);
        });
      } else if (ev.kind === "log") {
        log.textContent += ev.text;
        if (log.textContent.length > 65536) log.textContent = log.textContent.slice(-65536);
        log.scrollTop = log.scrollHeight;
      } else if (ev.kind === "state") {
        var s = document.getElementById("state");
        s.textContent = ev.state;
        s.className = "state state-" + ev.state;
        document.getElementById("reason").textContent = ev.reason;
        if (ev.agent) document.getElementById("agent").textContent = ev.agent;
        if (ev.terminal) {
          var live = document.getElementById("live");
          if (live) live.textContent = "Finished: " + ev.state + ". Reload for the verdicts and the final log.";
          source.close();
        }
      }
    };
    source.addEventListener("end", function () { source.close(); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var job = document.getElementById("job");
    if (job && job.getAttribute("data-live") === "true" && window.EventSource) follow(job);
  });
})();
