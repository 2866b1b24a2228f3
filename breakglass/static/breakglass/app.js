// Small enhancements; every page can be read without them.
(function () {
  "use strict";

  // New request: offer only the scopes of the chosen target.
  function linkScopes() {
    var target = document.getElementById("id_target");
    var scope = document.getElementById("id_scope");
    if (!target || !scope) return;
    function update() {
      var groups = scope.querySelectorAll("optgroup");
      groups.forEach(function (group) {
        var match = !target.value || group.label === target.value;
        group.hidden = !match;
        group.disabled = !match;
      });
      var chosen = scope.options[scope.selectedIndex];
      if (chosen && chosen.parentNode.disabled) scope.value = "";
      if (target.value && !scope.value) {
        var first = scope.querySelector('optgroup[label="' + target.value + '"] option');
        if (first) scope.value = first.value;
      }
    }
    target.addEventListener("change", update);
    update();
  }

  // Copy buttons next to secrets and commands, named after what they copy.
  function addCopyButtons(root) {
    if (!navigator.clipboard) return;
    root.querySelectorAll("pre.secret, pre.command").forEach(function (pre) {
      if (pre.dataset.copy) return;
      pre.dataset.copy = "1";
      var heading = document.getElementById(pre.getAttribute("aria-labelledby"));
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      if (heading) button.setAttribute("aria-label", "Copy: " + heading.textContent);
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(pre.textContent.trim()).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 2000);
        });
      });
      pre.parentNode.insertBefore(button, pre);
    });
  }

  // Times: shown in the reader's time zone, the UTC text kept on hover.
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  var localFormat = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
    hour12: false, timeZoneName: "short"
  });

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (time) {
      if (time.dataset.local) return;
      var moment = new Date(time.getAttribute("datetime"));
      if (isNaN(moment)) return;
      time.dataset.local = "1";
      time.title = time.textContent;
      var parts = {};
      localFormat.formatToParts(moment).forEach(function (part) {
        parts[part.type] = part.value;
      });
      time.textContent = parts.year + "-" + parts.month + "-" + parts.day + " " +
        parts.hour + ":" + parts.minute + ":" + parts.second + " " + parts.timeZoneName;
    });
    var note = document.getElementById("time-note");
    if (note && zone) {
      note.textContent = "Times are in your time zone (" + zone + "); hover one for UTC.";
    }
  }

  // Countdowns to a grant's expiry; at zero the status box asks for the news.
  function left(seconds) {
    var h = Math.floor(seconds / 3600);
    var m = Math.floor((seconds % 3600) / 60);
    var s = seconds % 60;
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s left";
  }

  var countdowns = [];
  function startCountdowns(root) {
    root.querySelectorAll(".countdown[data-expires]").forEach(function (el) {
      if (el.dataset.ticking) return;
      el.dataset.ticking = "1";
      countdowns.push(el);
    });
    tick();
  }

  function tick() {
    countdowns = countdowns.filter(function (el) { return el.isConnected; });
    countdowns.forEach(function (el) {
      var seconds = Math.round((new Date(el.dataset.expires) - Date.now()) / 1000);
      if (seconds > 0) {
        el.textContent = left(seconds);
        return;
      }
      el.textContent = "Expired; revoking.";
      if (!el.dataset.told) {
        el.dataset.told = "1";
        var live = el.closest("[hx-get]");
        if (live && window.htmx) window.htmx.trigger(live, "bg-expired");
      }
    });
  }
  setInterval(tick, 1000);

  function enhance(root) {
    localTimes(root);
    startCountdowns(root);
    addCopyButtons(root);
  }

  document.addEventListener("DOMContentLoaded", function () {
    linkScopes();
    enhance(document);
  });
  // Parts of a page replaced by a poll are enhanced like the rest.
  document.addEventListener("htmx:load", function (event) {
    enhance(event.target);
  });
})();
