// relay console: a little plain JavaScript (no framework, no CDN).
(function () {
  "use strict";
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.content : "";

  function post(url, body) {
    return fetch(url, { method: "POST", body: body, credentials: "same-origin",
                        headers: { "X-CSRF-Token": csrf } });
  }

  // Live transcript over Server-Sent Events.
  var list = document.getElementById("transcript");
  if (list && window.EventSource) {
    var state = document.getElementById("live-state");
    var agentLine = null;
    var source = new EventSource(list.dataset.stream);
    var add = function (cls, who, text) {
      var li = document.createElement("li");
      li.className = cls;
      var b = document.createElement("span");
      b.className = "who"; b.textContent = who;
      li.appendChild(b);
      var t = document.createElement("span");
      t.className = "text"; t.textContent = text;
      li.appendChild(t);
      list.appendChild(li);
      li.scrollIntoView({ block: "nearest" });
      return t;
    };
    source.addEventListener("open", function () { state.textContent = "live"; });
    source.addEventListener("line", function (e) {
      var line = JSON.parse(e.data);
      if (line.type === "agent") {
        if (!agentLine) agentLine = add("agent", "Agent", "");
        agentLine.textContent += line.text;
        if (line.last) agentLine = null;
        return;
      }
      agentLine = null;
      var labels = { caller: "Caller", keypad: "Keypad", interrupt: "Interrupted; heard:",
                     tool: "Tool", result: "Result", passages: "Passages", supervisor: "Supervisor",
                     error: "Model failure", end: "Handoff", closed: "Session closed" };
      var text = line.name ? line.name + " " + line.text : line.text;
      add(line.type, labels[line.type] || line.type, text);
    });
    source.addEventListener("ended", function () {
      state.textContent = "ended"; source.close();
    });
    source.addEventListener("error", function () { state.textContent = "reconnecting…"; });
  }

  // Supervisor commands without leaving the page.
  document.querySelectorAll("form.js-command").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var status = document.getElementById("command-status");
      post(form.action, new FormData(form)).then(function (r) { return r.json(); }).then(function (d) {
        status.textContent = d.error ? d.error : "Sent: " + d.kind + " (the call picks it up within a second).";
        if (!d.error) form.reset();
      });
    });
  });

  // Live calls table: refresh every second.
  var live = document.getElementById("live");
  if (live) {
    var body = live.querySelector("tbody");
    var fmt = function (s) { var m = Math.floor(s / 60); s = s % 60; return m + ":" + (s < 10 ? "0" : "") + s; };
    setInterval(function () {
      fetch(live.dataset.source, { credentials: "same-origin" }).then(function (r) { return r.json(); }).then(function (d) {
        body.textContent = "";
        if (!d.calls.length) {
          var tr = body.insertRow(); var td = tr.insertCell(); td.colSpan = 5; td.textContent = "No calls right now.";
        }
        d.calls.forEach(function (c) {
          var tr = body.insertRow();
          var a = document.createElement("a");
          a.href = "/console/calls/" + encodeURIComponent(c.call_sid); a.textContent = c.caller || c.call_sid;
          tr.insertCell().appendChild(a);
          tr.insertCell().textContent = c.agent;
          tr.insertCell().textContent = fmt(c.seconds);
          tr.insertCell().textContent = c.state;
          var said = tr.insertCell();
          said.className = "said";
          [["Caller: ", c.caller_said], ["Agent: ", c.agent_said]].forEach(function (pair) {
            if (!pair[1]) return;
            if (said.childNodes.length) said.appendChild(document.createElement("br"));
            var who = document.createElement("span");
            who.className = "who"; who.textContent = pair[0];
            said.appendChild(who);
            said.appendChild(document.createTextNode(pair[1]));
          });
        });
      });
    }, 1000);
  }

  // Copy buttons.
  document.querySelectorAll(".js-copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var input = document.getElementById(button.dataset.target);
      input.select();
      if (navigator.clipboard) { navigator.clipboard.writeText(input.value).catch(function () { document.execCommand("copy"); }); }
      else { document.execCommand("copy"); }
      button.textContent = "Copied";
    });
  });

  // Drag and drop onto the upload form.
  var zone = document.getElementById("upload");
  if (zone) {
    var input = zone.querySelector('input[type="file"]');
    ["dragenter", "dragover"].forEach(function (n) { zone.addEventListener(n, function (e) { e.preventDefault(); zone.classList.add("over"); }); });
    ["dragleave", "drop"].forEach(function (n) { zone.addEventListener(n, function () { zone.classList.remove("over"); }); });
    zone.addEventListener("drop", function (e) { e.preventDefault(); input.files = e.dataTransfer.files; });
  }
})();
