// Keyboard shortcuts of the labelling page; the page works without them (plain form posts).
(function () {
  "use strict";
  var form = document.getElementById("vote-form");
  if (!form) return;
  var comment = document.getElementById("comment");
  var keys = { "1": "a", "a": "a", "2": "b", "b": "b", "3": "tie", "t": "tie", "4": "both_bad", "x": "both_bad" };
  var sent = false;
  form.addEventListener("submit", function (event) {
    if (sent) { event.preventDefault(); return; }  // one vote per shown pair, even on a double press
    sent = true;
  });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var typing = event.target === comment || event.target.tagName === "INPUT";
    if (typing) {
      if (event.key === "Escape") comment.blur();
      return;
    }
    var key = event.key.toLowerCase();
    if (key === "c") { event.preventDefault(); comment.focus(); return; }
    var choice = keys[key];
    if (!choice) return;
    event.preventDefault();
    var button = document.getElementById("choose-" + choice);
    button.classList.add("pressed");
    if (form.requestSubmit) form.requestSubmit(button); else button.click();
  });
})();
