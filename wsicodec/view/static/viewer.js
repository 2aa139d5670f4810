// The page of `wsicodec view`: one OpenSeadragon viewer for the store, a second one for the
// original when there is one (pan and zoom kept together both ways), or both on one canvas
// with a curtain; a scale bar from the MPP, the store's tile grid, PSNR of the view.
"use strict";

(async function () {
  const info = await (await fetch("/api/info")).json();
  const $ = (id) => document.getElementById(id);
  const [W, H] = info.dimensions;
  const mpp = info.mpp && info.mpp[0] ? Number(info.mpp[0]) : null;
  const dzLevels = Math.ceil(Math.log2(Math.max(W, H))) + 1;

  // -- panel ------------------------------------------------------------------------------
  const facts = [
    `<b>${info.name}</b>`, `${W} × ${H} px`, mpp ? `${mpp} µm/px` : "no MPP",
    `model ${info.model}`,
    `${info.image_bits_per_pixel.toFixed(3)} bits/px for the image (${info.bits_per_pixel.toFixed(3)} the whole store)`,
  ];
  if (info.times_smaller) {
    facts.push(info.times_smaller >= 1 ? `${info.times_smaller.toFixed(1)}× smaller than ${info.source_file}`
      : `${(1 / info.times_smaller).toFixed(1)}× larger than ${info.source_file}`);
  }
  $("facts").innerHTML = facts.join(" · ");
  document.title = `${info.name} — wsicodec view`;
  const storeCaption = `store: ${info.model}, ${info.image_bits_per_pixel.toFixed(3)} bits/px`;
  $("store-caption").textContent = storeCaption;
  if (info.against) $("original-caption").textContent = `original: ${info.against.name}`;
  for (const name of info.associated) {
    const a = document.createElement("a");
    a.href = "#"; a.textContent = name;
    a.onclick = (e) => { e.preventDefault(); $("associated-image").src = `/associated/${name}.png`; $("associated-dialog").showModal(); };
    $("associated").appendChild(a);
  }

  // -- viewers ----------------------------------------------------------------------------
  const options = (id, source) => ({
    id, tileSources: source, prefixUrl: "/static/openseadragon/images/", drawer: "canvas",
    showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 8,
    timeout: 600000, animationTime: 0.4, visibilityRatio: 0.2,
  });
  if (info.against) {  // both panes laid out before either viewer measures its size
    $("original-pane").hidden = false;
    $("mode-control").hidden = false;
  }
  const store = OpenSeadragon(options("store-viewer", "/store.dzi"));
  const original = info.against ? OpenSeadragon(options("original-viewer", "/original.dzi")) : null;
  const storeItem = () => {
    for (let i = 0; i < store.world.getItemCount(); i++) {
      const item = store.world.getItemAt(i);
      if (item.source && String(item.source.tilesUrl || "").includes("store_files")) return item;
    }
    return store.world.getItemAt(store.world.getItemCount() - 1);
  };

  // pan and zoom kept together, both ways: the viewer under the pointer (or last touched)
  // leads, the other copies its current view every frame without animating on its own (two
  // viewers animating towards each other's targets would fight over the view)
  let mode = "side";
  let leader = store;
  function follow(from, to) {
    const copy = () => {
      if (leader !== from || !to || to.world.getItemCount() === 0 || mode === "curtain") return;
      to.viewport.zoomTo(from.viewport.getZoom(true), null, true);
      to.viewport.panTo(from.viewport.getCenter(true), true);
    };
    from.addHandler("viewport-change", copy);
    from.addHandler("animation", copy);
    for (const ev of ["pointerenter", "pointerdown", "focusin", "wheel"]) {
      from.element.addEventListener(ev, () => { leader = from; }, { passive: true });
    }
  }
  if (original) { follow(store, original); follow(original, store); }

  // -- scale bar --------------------------------------------------------------------------
  function scalebar(viewer, el) {
    if (!mpp || viewer.world.getItemCount() === 0) { el.hidden = true; return; }
    const item = viewer.world.getItemAt(0);
    const umPerScreenPx = mpp / item.viewportToImageZoom(viewer.viewport.getZoom(true));
    const target = 120 * umPerScreenPx;
    const p = Math.pow(10, Math.floor(Math.log10(target)));
    const length = [5, 2, 1].map((c) => c * p).find((v) => v <= target) || p;
    el.style.width = `${Math.round(length / umPerScreenPx)}px`;
    el.textContent = length >= 1000 ? `${length / 1000} mm` : `${+length.toPrecision(3)} µm`;
  }

  // -- tile grid of the store: glass tiles shaded, unreadable tiles red -------------------
  const glass = new Set(info.grid.glass.map(([x, y]) => `${x},${y}`));
  let unreadable = new Set();
  function drawGrid() {
    const canvas = $("grid-overlay");
    const ratio = window.devicePixelRatio || 1;
    const pane = $("store-pane");
    canvas.width = pane.clientWidth * ratio; canvas.height = pane.clientHeight * ratio;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const item = storeItem();
    if (!item) return;
    const showGrid = $("grid").checked;
    if (!showGrid && unreadable.size === 0) return;
    const T = info.grid.tile;
    const zoom = item.viewportToImageZoom(store.viewport.getZoom(true));
    const bounds = item.viewportToImageRectangle(store.viewport.getBounds(true));
    const tx0 = Math.max(0, Math.floor(bounds.x / T)), ty0 = Math.max(0, Math.floor(bounds.y / T));
    const tx1 = Math.min(info.grid.tiles_x - 1, Math.floor((bounds.x + bounds.width) / T));
    const ty1 = Math.min(info.grid.tiles_y - 1, Math.floor((bounds.y + bounds.height) / T));
    const side = T * zoom * ratio;
    if ((tx1 - tx0 + 1) * (ty1 - ty0 + 1) > 40000) return;
    ctx.lineWidth = 1;
    for (let ty = ty0; ty <= ty1; ty++) {
      for (let tx = tx0; tx <= tx1; tx++) {
        const p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(tx * T, ty * T));
        const x = p.x * ratio, y = p.y * ratio;
        // edge tiles end with the slide
        const w = Math.min(T, W - tx * T) * zoom * ratio, h = Math.min(T, H - ty * T) * zoom * ratio;
        const key = `${tx},${ty}`;
        if (unreadable.has(key)) {
          ctx.strokeStyle = "rgba(255, 40, 40, 0.95)"; ctx.lineWidth = 3 * ratio;
          ctx.strokeRect(x, y, w, h); ctx.lineWidth = 1;
        }
        if (!showGrid) continue;
        if (glass.has(key)) { ctx.fillStyle = "rgba(60, 140, 255, 0.25)"; ctx.fillRect(x, y, w, h); }
        if (side >= 6) { ctx.strokeStyle = "rgba(255, 213, 74, 0.7)"; ctx.strokeRect(x + 0.5, y + 0.5, w, h); }
      }
    }
  }
  let unreadableTimer = null;
  store.addHandler("tile-loaded", () => {
    clearTimeout(unreadableTimer);
    unreadableTimer = setTimeout(async () => {
      const r = await (await fetch("/api/unreadable")).json();
      unreadable = new Set((r.store || []).map(([x, y]) => `${x},${y}`));
      drawGrid();
    }, 800);
  });
  $("grid").onchange = drawGrid;

  // -- PSNR of the view against the original ----------------------------------------------
  let psnrTimer = null;
  function updatePsnr() {
    if (!info.against) return;
    clearTimeout(psnrTimer);
    psnrTimer = setTimeout(async () => {
      const item = storeItem();
      if (!item) return;
      const zoom = item.viewportToImageZoom(store.viewport.getZoom(true));
      const scale = Math.min(dzLevels - 1, Math.max(0, Math.floor(Math.log2(1 / zoom))));
      const b = item.viewportToImageRectangle(store.viewport.getBounds(true));
      const d = Math.pow(2, scale);
      const q = new URLSearchParams({
        level: dzLevels - 1 - scale, x: Math.floor(b.x / d), y: Math.floor(b.y / d),
        w: Math.max(1, Math.ceil(b.width / d)), h: Math.max(1, Math.ceil(b.height / d)),
      });
      const r = await fetch(`/api/psnr?${q}`);
      if (!r.ok) return;
      const p = await r.json();
      const where = `${p.capped ? "the centre of the view" : "the view"} at ${d === 1 ? "full" : `1/${d}`} scale`;
      $("psnr").textContent = p.blocks === 0 ? "" : p.identical ? `identical to the original over ${where}`
        : `PSNR ${p.psnr} dB over ${where}`;
    }, 400);
  }

  // -- curtain: the original under the store on one canvas, the store clipped at a line ---
  let originalItem = null;
  function updateCurtain() {
    const item = storeItem();
    if (mode !== "curtain" || !item) return;
    const pane = $("store-pane");
    const px = pane.clientWidth * $("curtain").value / 100;
    const cut = item.viewerElementToImageCoordinates(new OpenSeadragon.Point(px, 0)).x;
    item.setClip(new OpenSeadragon.Rect(0, 0, Math.max(0, Math.min(W, cut)), H));
    const line = $("curtain-line");
    line.hidden = false; line.style.left = `${px - 1}px`;
  }
  function setMode(next) {
    mode = next;
    $("curtain-control").hidden = mode !== "curtain";
    $("store-caption").textContent = mode === "curtain"
      ? `◀ store (${info.model}) | original (${info.against.name}) ▶` : storeCaption;
    if (mode === "curtain") {
      $("original-pane").hidden = true;
      store.addTiledImage({ tileSource: "/original.dzi", index: 0, success: (e) => { originalItem = e.item; updateCurtain(); } });
    } else {
      if (originalItem) store.world.removeItem(originalItem);
      originalItem = null;
      const item = storeItem();
      if (item) item.setClip(null);
      $("curtain-line").hidden = true;
      $("original-pane").hidden = false;
      setTimeout(() => { original.viewport.zoomTo(store.viewport.getZoom(), null, true); original.viewport.panTo(store.viewport.getCenter(), true); }, 50);
    }
  }
  $("mode").onchange = (e) => setMode(e.target.value);
  $("curtain").oninput = updateCurtain;
  $("flip").onclick = () => { $("curtain").value = Number($("curtain").value) > 50 ? 0 : 100; updateCurtain(); };
  document.addEventListener("keydown", (e) => { if (e.key === "t" && mode === "curtain") $("flip").click(); });

  // -- redraw the overlays whenever a view changes ----------------------------------------
  store.addHandler("update-viewport", () => { scalebar(store, $("store-scalebar")); drawGrid(); updateCurtain(); });
  store.addHandler("animation-finish", updatePsnr);
  store.addHandler("open", updatePsnr);
  if (original) original.addHandler("update-viewport", () => scalebar(original, $("original-scalebar")));

  // for scripts driving the page (and the tests): the viewers and whether everything is drawn
  const viewers = original ? [store, original] : [store];
  window.wsiview = {
    store, original, info,
    ready: () => viewers.every((v) => v.world.getItemCount() > 0
      && Array.from({ length: v.world.getItemCount() }, (_, i) => v.world.getItemAt(i)).every((it) => it.getFullyLoaded())),
    setMode,
  };
})();
