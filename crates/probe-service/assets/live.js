// relayward probe-service: the running test's transcript, live. Without JavaScript the page
// refreshes itself (<noscript> meta refresh) instead; nothing here is needed for the results.
(function () {
  "use strict";
  var pre = document.getElementById("transcript");
  if (!pre || !pre.dataset.events || !window.EventSource) { return; }
  var source = new EventSource(pre.dataset.events);
  source.addEventListener("line", function (event) {
    // textContent, never innerHTML: the lines are the tested server's text.
    pre.appendChild(document.createTextNode(event.data + "\n"));
    pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("done", function () {
    source.close();
    window.location.reload();
  });
})();
