// Drag and drop onto the upload box. Progressive enhancement only: without JavaScript the
// plain <input type="file"> and the submit button do everything.
(function () {
  "use strict";
  var zone = document.getElementById("dropzone");
  var input = document.getElementById("image");
  var shown = document.getElementById("file-name");
  if (!zone || !input) { return; }

  // Several photos of one lesion are analysed together, up to the server's limit.
  var maxFiles = parseInt(input.getAttribute("data-max-files") || "1", 10);

  function showName() {
    // textContent, never innerHTML: file names are user input.
    var names = Array.prototype.map.call(input.files, function (f) { return f.name; });
    var text = names.length ? "Selected: " + names.join(", ") : "";
    if (names.length > maxFiles) {
      text += " (too many: at most " + maxFiles + " photos of one lesion)";
    }
    shown.textContent = text;
    // The browser then refuses to submit and says why; the server checks the limit too.
    input.setCustomValidity(names.length > maxFiles ? "Choose at most " + maxFiles + " photos of one lesion." : "");
  }

  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  });
  ["dragleave", "dragend", "drop"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("dragging"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      showName();
    }
  });
  // A drop that misses the box would make the browser open the image and leave the page.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });
  input.addEventListener("change", showName);

  var form = zone.closest("form");
  if (form) {
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      if (button) {
        button.disabled = true;
        button.textContent = "Analysing…";
      }
      // The first result can take many seconds: say so where a screen reader listens.
      if (shown) { shown.textContent = "Analysing… the result page opens when it is ready."; }
    });
  }
}());
