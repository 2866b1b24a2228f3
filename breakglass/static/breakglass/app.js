// Small enhancements; every page works without them.
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
    var rule = document.getElementById("target-rule");
    var fallback = rule ? rule.innerHTML : "";
    function showRule() {
      if (!rule) return;
      var card = document.querySelector('[data-target="' + target.value + '"] .rule');
      rule.innerHTML = card ? card.innerHTML : fallback;
    }
    target.addEventListener("change", update);
    target.addEventListener("change", showRule);
    showRule();
    update();
  }

  // Copy buttons next to secrets and commands.
  function addCopyButtons() {
    if (!navigator.clipboard) return;
    document.querySelectorAll("pre.secret, pre.command").forEach(function (pre) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(pre.textContent.trim()).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 2000);
        });
      });
      pre.parentNode.insertBefore(button, pre);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    linkScopes();
    addCopyButtons();
  });
})();
