// cadpipe portal page: validate and preview the chosen files, upload with progress, follow the job, show the report.
(function () {
  "use strict";
  // settings come as JSON data (the Content-Security-Policy allows no inline script)
  const cfg = JSON.parse(document.getElementById("cadpipe-config").textContent);
  cfg.accept = cfg.accept.split(",");
  const $ = (id) => document.getElementById(id);
  const form = $("upload-form"), filesInput = $("files"), submit = $("submit"), errorBox = $("error");
  const STEP_TEXT = {"uploaded": "File received", "loaded": "Image loaded", "preprocessed": "Image prepared",
                     "inferred": "Model applied", "report ready": "Report ready"};
  const params = new URLSearchParams(window.location.search);
  let objectUrls = [];

  if (cfg.tokenRequired) { $("token-field").hidden = false; }
  if (params.get("token")) { $("token").value = params.get("token"); }

  function token() { return $("token").value.trim(); }
  function withToken(url) { return token() ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token()) : url; }

  function suffix(name) {
    const low = name.toLowerCase();
    if (low.endsWith(".nii.gz")) return ".nii.gz";
    const dot = low.lastIndexOf(".");
    return dot > 0 ? low.slice(dot) : "";
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
    if (text) errorBox.scrollIntoView({block: "nearest"});
  }

  // Client-side checks (the server checks everything again): type, size, count, LJPEG with its .ics.
  function validate(files) {
    if (!files.length) return "Choose at least one file.";
    if (files.length > cfg.maxFiles) return `Too many files: ${files.length} (at most ${cfg.maxFiles}).`;
    let total = 0;
    const kinds = [];
    for (const f of files) {
      const s = suffix(f.name);
      if (s !== "" && !cfg.accept.includes(s)) {
        return `${f.name}: file type ${s} is not accepted. Accepted: DICOM, LJPEG + .ics, NIfTI, JPEG, PNG, TIFF.`;
      }
      if (f.size === 0) return `${f.name}: the file is empty.`;
      if (f.size > cfg.maxFileMB * 1048576) return `${f.name}: larger than the limit of ${cfg.maxFileMB} MB.`;
      total += f.size;
      kinds.push(s);
    }
    if (total > cfg.maxTotalMB * 1048576) return `The files are larger than the limit of ${cfg.maxTotalMB} MB in total.`;
    if (kinds.includes(".ljpeg") && !kinds.includes(".ics")) {
      return "An LJPEG mammogram needs its case .ics file: select both together.";
    }
    return "";
  }

  function preview(files) {
    objectUrls.forEach((u) => URL.revokeObjectURL(u));
    objectUrls = [];
    const box = $("preview");
    box.textContent = "";
    for (const f of files) {
      const fig = document.createElement("figure");
      const cap = document.createElement("figcaption");
      const s = suffix(f.name);
      if ([".png", ".jpg", ".jpeg"].includes(s)) {
        const img = document.createElement("img");
        const url = URL.createObjectURL(f);
        objectUrls.push(url);
        img.src = url;
        img.alt = "Preview of " + f.name;
        fig.appendChild(img);
        cap.textContent = `${f.name} (${(f.size / 1024).toFixed(0)} kB)`;
      } else {
        const kind = s === ".ics" ? "case information for the LJPEG" :
          (s === ".nii" || s === ".nii.gz") ? "NIfTI volume" : (s === ".nrrd") ? "NRRD volume" :
          (s === ".mha") ? "MetaImage volume" : (s === ".ljpeg") ? "LJPEG mammogram" :
          (s === ".tif" || s === ".tiff") ? "TIFF image" : "DICOM file";
        cap.textContent = `${f.name} (${(f.size / 1024).toFixed(0)} kB): ${kind}; the browser cannot preview it, ` +
          "the report will show the image.";
      }
      fig.appendChild(cap);
      box.appendChild(fig);
    }
  }

  filesInput.addEventListener("change", () => {
    const files = Array.from(filesInput.files);
    const problem = validate(files);
    showError(problem);
    preview(problem ? [] : files);
    submit.disabled = Boolean(problem);
  });

  function renderSteps(job) {
    const list = $("steps");
    list.textContent = "";
    let currentShown = false;
    for (const step of job.steps) {
      const li = document.createElement("li");
      li.textContent = STEP_TEXT[step.name] || step.name;
      if (step.done) li.className = "done";
      else if (job.status === "error" && !currentShown) { li.className = "failed"; li.textContent += " — failed"; currentShown = true; }
      else if (!currentShown) { li.className = "current"; li.setAttribute("aria-current", "step"); currentShown = true; }
      list.appendChild(li);
    }
  }

  function renderResult(job) {
    const summary = $("summary");
    summary.textContent = "";
    const table = $("probabilities");
    const head = table.querySelector("thead"), body = table.querySelector("tbody");
    head.textContent = ""; body.textContent = "";
    let anyProb = false;
    for (const row of job.rows) {
      const h = document.createElement("h3");
      h.textContent = row.input_paths || row.unit_id;
      summary.appendChild(h);
      const ul = document.createElement("ul");
      const texts = row.status === "ok" ? (row.findings || []).map((f) => f.text) : ["Could not be analysed: " + row.error];
      for (const t of texts) { const li = document.createElement("li"); li.textContent = t; ul.appendChild(li); }
      summary.appendChild(ul);
      // the calls and printed numbers come from the server (cadpipe.pipelines.outputs.findings.row_calls): the
      // same comparison and rounding as the findings, the captions and the report
      const calls = row.calls || [];
      if (calls.length) {
        if (!anyProb) {
          const tr = document.createElement("tr");
          for (const title of ["Image", "Class", "Probability", "Operating threshold", "Call"]) { const th = document.createElement("th"); th.textContent = title; tr.appendChild(th); }
          head.appendChild(tr);
        }
        anyProb = true;
        for (const c of calls) {
          const tr = document.createElement("tr");
          const call = c.threshold === null ? "—" : `${c.relation}: ${c.call}` + (c.note ? ` (${c.note})` : "");
          for (const text of [row.input_paths || row.unit_id, c.name.replace(/_/g, " "), c.shown_probability, c.shown_threshold || "—", call]) {
            const td = document.createElement("td"); td.textContent = text; tr.appendChild(td);
          }
          body.appendChild(tr);
        }
      }
    }
    table.hidden = !anyProb;
    if (job.overlay_urls.length) {
      $("overlay").src = withToken(job.overlay_urls[0]);
      $("overlay-link").href = withToken(job.overlay_urls[0]);
      const caption = (job.overlay_captions || [])[0];
      if (caption) { $("overlay-caption").textContent = caption; $("overlay").alt = caption; }
      $("overlay-figure").hidden = false;
    }
    if (job.report_url) {
      $("download-html").href = withToken(job.report_url);
      $("download-html").setAttribute("download", `cadpipe_report_${job.id.slice(0, 8)}.html`);
      $("report-frame").src = withToken(job.report_url);
    }
    if (job.report_pdf_url) { $("download-pdf").href = withToken(job.report_pdf_url); $("download-pdf").hidden = false; }
    const section = $("result");
    section.hidden = false;
    section.scrollIntoView({block: "start"});  // instant: later layout changes cannot cut it short
    section.focus({preventScroll: true});
  }

  function follow(id) {
    const xhr = new XMLHttpRequest();
    xhr.open("GET", `/api/studies/${id}?wait=10`);  // long poll: answers as soon as the step changes
    if (token()) xhr.setRequestHeader("Authorization", "Bearer " + token());
    xhr.onload = () => {
      let job;
      try { job = JSON.parse(xhr.responseText); } catch (e) { job = null; }
      if (xhr.status !== 200 || !job) {
        showError((job && job.error) || `Status request failed (HTTP ${xhr.status}).`);
        submit.disabled = false;
        return;
      }
      renderSteps(job);
      if (job.status === "done") { renderResult(job); submit.disabled = false; if (job.error) showError(job.error); }
      else if (job.status === "error") { showError(job.error || "The study could not be analysed."); submit.disabled = false;
                                         if (job.rows && job.rows.length) renderResult(job); }
      else setTimeout(() => follow(id), 50);
    };
    xhr.onerror = () => { showError("Lost contact with the service; reload the page to try again."); submit.disabled = false; };
    xhr.send();
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const files = Array.from(filesInput.files);
    const problem = validate(files);
    showError(problem);
    if (problem) return;
    const data = new FormData();
    for (const f of files) data.append("files", f, f.name);
    data.append("task", $("task").value);
    if (token()) data.append("token", token());
    $("result").hidden = true;
    $("progress-section").hidden = false;
    $("steps").textContent = "";
    const bar = $("upload-progress"), pct = $("upload-percent");
    bar.value = 0; pct.textContent = "0%";
    submit.disabled = true;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/studies");
    if (token()) xhr.setRequestHeader("Authorization", "Bearer " + token());
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) { const p = Math.round(100 * e.loaded / e.total); bar.value = p; pct.textContent = p + "%"; }
    };
    xhr.onload = () => {
      let body;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      if (xhr.status === 202 && body) { bar.value = 100; pct.textContent = "100%"; renderSteps(body); follow(body.id); }
      else { showError((body && body.error) || `Upload failed (HTTP ${xhr.status}).`); submit.disabled = false; }
    };
    xhr.onerror = () => { showError("The upload failed (connection lost or the file was refused)."); submit.disabled = false; };
    xhr.send(data);
  });
})();
