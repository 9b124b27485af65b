/* sd-forge-omost: the canvas editor in the Omost accordion (txt2img and img2img).
 *
 * Wiring (the Python accordion provides): a Textbox #omost_<tab>_canvas_json holding the canvas JSON and an
 * HTML block #omost_<tab>_canvas_editor to mount into; the image size comes from #<tab>_width / #<tab>_height.
 * Every edit writes the JSON into the Textbox's textarea and calls updateInput() so Python sees it; text that
 * changes there (Python, an LLM answer, a paste) is read back, by events and by a cheap poll. Only gradioApp(),
 * updateInput() and onUiLoaded() of the WebUI are used, so Gradio 3 (reForge) and Gradio 4 (Forge) both work.
 */
(function () {
    'use strict';

    var ns = window.omostCanvasEditor = window.omostCanvasEditor || {};
    var TABS = ['txt2img', 'img2img'];
    var POLL_MS = 250;
    var TEXT_DEBOUNCE_MS = 300;
    var EDGE_TOLERANCE_PX = 6;
    var MAX_CANVAS_HEIGHT_PX = 480;
    var UNDO_LIMIT = 200;
    var REGION_FIELDS = [
        ['description', 'Description', 'input'],
        ['detailed_descriptions', 'Detailed descriptions (one per line)', 'textarea'],
        ['tags', 'Tags', 'input'],
        ['atmosphere', 'Atmosphere', 'input'],
        ['style', 'Style', 'input'],
        ['quality_meta', 'Quality / meta', 'input'],
        ['negative', 'Negative prompt (yours: never sent to the LLM)', 'input']
    ];
    var GLOBAL_FIELDS = ['description', 'detailed_descriptions', 'tags', 'negative'];
    var RECT_SIDES = ['top', 'bottom', 'left', 'right'];

    function model() { return ns.model; }

    function appRoot() {
        return typeof gradioApp === 'function' ? gradioApp() : document;
    }

    function findById(id) {
        var root = appRoot();
        return (root && root.querySelector('#' + id)) || document.getElementById(id);
    }

    function notifyInput(textarea) {
        if (typeof updateInput === 'function') {
            updateInput(textarea);
        } else {
            textarea.dispatchEvent(new Event('input', { bubbles: true }));
        }
    }

    function el(tag, attrs, children) {
        var node = document.createElement(tag);
        Object.keys(attrs || {}).forEach(function (k) {
            if (k === 'text') node.textContent = attrs[k];
            else if (k === 'className') node.className = attrs[k];
            else node.setAttribute(k, attrs[k]);
        });
        (children || []).forEach(function (c) { node.appendChild(c); });
        return node;
    }

    function button(label, action, title) {
        return el('button', { type: 'button', className: 'omost-ce-btn', 'data-action': action, title: title || label, text: label });
    }

    function isTextEntry(node) {
        return node && (node.tagName === 'TEXTAREA' || (node.tagName === 'INPUT' &&
            ['text', 'number', 'search', ''].indexOf(node.type) >= 0));
    }

    function activeElementOf(node) {
        var root = node.getRootNode ? node.getRootNode() : document;
        return root.activeElement || document.activeElement;
    }

    function readSliderValue(id) {
        var box = findById(id);
        if (!box) return null;
        var input = box.querySelector('input[type=number]') || box.querySelector('input[type=range]');
        var v = input ? parseFloat(input.value) : NaN;
        return isFinite(v) && v > 0 ? v : null;
    }

    // ---- the editor of one tab ---------------------------------------------------------------------

    function Editor(tab) {
        this.tab = tab;
        this.doc = null;            // the last good canvas (our JSON form)
        this.lastText = null;       // the textarea text last read or written
        this.error = null;          // message while the textarea holds a bad canvas
        this.note = '';             // information about the last read (e.g. ComfyUI form)
        this.flash = '';            // a one-off message (e.g. no gallery image)
        this.undoStack = [];
        this.redoStack = [];
        this.groupKey = null;       // consecutive edits with the same key share one undo step
        this.selected = -1;         // region index in program order; -1 = global
        this.drag = null;
        this.pendingWrite = null;
        this.snap = true;
        this.showGrid = true;
        this.background = null;     // an Image to edit against (never uploaded)
        this.overlayOpacity = 0.5;
        this.imageSize = [512, 512];
        this.cssSize = [0, 0];
        this.textarea = null;
        this.host = null;
        this.sliderInputs = [];
        this.build();
    }

    Editor.prototype.build = function () {
        var self = this;
        this.canvas = el('canvas', { className: 'omost-ce-canvas', tabindex: '0', 'aria-label': 'Omost canvas: drag boxes to move, edges to resize, arrows to nudge' });
        this.ctx = this.canvas.getContext('2d');
        this.composite = document.createElement('canvas');
        this.fileInput = el('input', { type: 'file', accept: 'image/*', className: 'omost-ce-file' });
        this.opacityInput = el('input', { type: 'range', min: '0', max: '1', step: '0.05', value: String(this.overlayOpacity), title: 'Opacity of the boxes over the background image' });
        this.snapInput = el('input', { type: 'checkbox', 'data-option': 'snap' });
        this.snapInput.checked = this.snap;
        this.gridInput = el('input', { type: 'checkbox', 'data-option': 'grid' });
        this.gridInput.checked = this.showGrid;

        var toolbar = el('div', { className: 'omost-ce-toolbar' }, [
            button('Add', 'add', 'Add a region (nearest to the viewer)'),
            button('Duplicate', 'duplicate', 'Duplicate the selected region'),
            button('Delete', 'delete', 'Delete the selected region (Delete key)'),
            el('span', { className: 'omost-ce-sep' }),
            button('Farther', 'farther', 'Move the selected region one step farther (behind)'),
            button('Nearer', 'nearer', 'Move the selected region one step nearer (in front)'),
            el('span', { className: 'omost-ce-sep' }),
            button('Undo', 'undo', 'Undo (Ctrl+Z)'),
            button('Redo', 'redo', 'Redo (Ctrl+Y)'),
            el('span', { className: 'omost-ce-sep' }),
            el('label', { className: 'omost-ce-option', title: 'Snap to whole grid units (hold Alt while dragging for the opposite)' }, [this.snapInput, document.createTextNode(' Snap')]),
            el('label', { className: 'omost-ce-option' }, [this.gridInput, document.createTextNode(' Grid')])
        ]);
        var bgbar = el('div', { className: 'omost-ce-toolbar omost-ce-bgbar' }, [
            el('span', { className: 'omost-ce-label', text: 'Background:' }),
            button('Image file…', 'bg-file', 'Edit against a local image (it stays in the browser)'),
            button('Last result', 'bg-result', 'Edit against the last generated image of this tab'),
            button('Clear', 'bg-clear', 'Remove the background image'),
            el('label', { className: 'omost-ce-option' }, [document.createTextNode('Box opacity '), this.opacityInput]),
            this.fileInput
        ]);
        this.errorBox = el('div', { className: 'omost-ce-error', role: 'alert' });
        this.errorText = el('span', { className: 'omost-ce-error-text' });
        this.errorBox.appendChild(this.errorText);
        this.errorBox.appendChild(button('Restore last good canvas', 'restore', 'Replace the text in the box with the last good canvas'));
        this.noteBox = el('div', { className: 'omost-ce-note', role: 'status' });
        this.statusLine = el('div', { className: 'omost-ce-status' });
        this.canvasWrap = el('div', { className: 'omost-ce-canvas-wrap' }, [this.canvas]);
        this.list = el('ol', { className: 'omost-ce-list', 'aria-label': 'Regions, far to near' });
        this.form = this.buildForm();
        var side = el('div', { className: 'omost-ce-side' }, [
            el('div', { className: 'omost-ce-heading', text: 'Regions (far → near)' }), this.list, this.form
        ]);
        this.root = el('div', { className: 'omost-ce', 'data-tab': this.tab }, [
            toolbar, bgbar, this.errorBox, this.noteBox,
            el('div', { className: 'omost-ce-main' }, [el('div', { className: 'omost-ce-stage' }, [this.canvasWrap, this.statusLine]), side])
        ]);

        this.root.addEventListener('click', function (e) {
            var b = e.target.closest('[data-action]');
            if (b && self.root.contains(b)) self.action(b.getAttribute('data-action'), b);
        });
        this.root.addEventListener('keydown', function (e) { self.onKey(e); });
        this.snapInput.addEventListener('change', function () { self.snap = self.snapInput.checked; });
        this.gridInput.addEventListener('change', function () { self.showGrid = self.gridInput.checked; self.render(); });
        this.opacityInput.addEventListener('input', function () { self.overlayOpacity = parseFloat(self.opacityInput.value); self.render(); });
        this.fileInput.addEventListener('change', function () { self.loadBackgroundFile(self.fileInput.files[0]); });
        this.canvas.addEventListener('pointerdown', function (e) { self.onPointerDown(e); });
        this.canvas.addEventListener('pointermove', function (e) { self.onPointerMove(e); });
        this.canvas.addEventListener('pointerup', function (e) { self.onPointerUp(e, true); });
        this.canvas.addEventListener('pointercancel', function (e) { self.onPointerUp(e, false); });
        if (typeof ResizeObserver === 'function') {
            new ResizeObserver(function () { self.layout(); }).observe(this.canvasWrap);
        }
    };

    Editor.prototype.buildForm = function () {
        var self = this;
        var m = model();
        this.fields = {};
        var form = el('div', { className: 'omost-ce-form' });
        this.formTitle = el('div', { className: 'omost-ce-heading' });
        form.appendChild(this.formTitle);
        REGION_FIELDS.forEach(function (f) {
            var input = f[2] === 'textarea' ? el('textarea', { rows: '4' }) : el('input', { type: 'text' });
            input.setAttribute('data-field', f[0]);
            input.addEventListener('input', function () { self.onFieldInput(f[0], input.value); });
            input.addEventListener('blur', function () { self.endGroup(); });
            self.fields[f[0]] = input;
            form.appendChild(el('label', { className: 'omost-ce-field', 'data-for': f[0] }, [el('span', { text: f[1] }), input]));
        });

        var numbers = el('div', { className: 'omost-ce-numbers', 'data-for': 'numbers' });
        [['distance', 'Distance', '0.1', '0.1'], ['weight', 'Weight', '0', '0.05'],
         ['top', 'Top', '0', '1'], ['bottom', 'Bottom', '0', '1'], ['left', 'Left', '0', '1'], ['right', 'Right', '0', '1']
        ].forEach(function (f) {
            var input = el('input', { type: 'number', min: f[2], step: f[3], 'data-field': f[0] });
            if (f[0] === 'weight') input.max = '2';
            if (RECT_SIDES.indexOf(f[0]) >= 0) input.max = String(m.GRID);
            input.addEventListener('change', function () { self.onNumberChange(f[0], input); });
            self.fields[f[0]] = input;
            numbers.appendChild(el('label', { className: 'omost-ce-field omost-ce-num' }, [el('span', { text: f[1] }), input]));
        });
        form.appendChild(numbers);
        this.geometryNote = el('div', { className: 'omost-ce-geometry' });
        form.appendChild(this.geometryNote);

        this.colorLabel = el('span', { className: 'omost-ce-color-name' });
        this.colorSwatch = el('span', { className: 'omost-ce-swatch' });
        this.colorFilter = el('input', { type: 'search', placeholder: 'filter colours', className: 'omost-ce-color-filter', 'aria-label': 'Filter colour names' });
        this.palette = el('div', { className: 'omost-ce-palette', role: 'listbox', 'aria-label': 'HTML colour names' });
        m.COLOR_NAMES.forEach(function (name) {
            var sw = el('button', { type: 'button', className: 'omost-ce-palette-item', 'data-color': name, title: name, 'aria-label': name });
            sw.style.backgroundColor = m.cssColor(name);
            self.palette.appendChild(sw);
        });
        this.palette.addEventListener('click', function (e) {
            var sw = e.target.closest('[data-color]');
            if (sw) self.setColor(sw.getAttribute('data-color'));
        });
        this.colorFilter.addEventListener('input', function () { self.filterPalette(); });
        this.colorFilter.addEventListener('keydown', function (e) {
            if (e.key !== 'Enter') return;
            e.preventDefault();
            var best = model().matchColorNames(self.colorFilter.value)[0];
            if (best) self.setColor(best);
        });
        form.appendChild(el('div', { className: 'omost-ce-field omost-ce-color' }, [
            el('span', { text: 'Colour' }),
            el('div', { className: 'omost-ce-color-current' }, [this.colorSwatch, this.colorLabel, this.colorFilter]),
            this.palette
        ]));
        return form;
    };

    // ---- wiring to the WebUI -------------------------------------------------------------------------

    /* Mount into the page if the elements are there; re-read the textarea and the size. Cheap when idle. */
    Editor.prototype.sync = function () {
        if (!this.host || !this.host.isConnected) this.host = findById('omost_' + this.tab + '_canvas_editor');
        if (!this.host) return false;
        var textarea = this.textarea;
        if (!textarea || !textarea.isConnected) {
            var box = findById('omost_' + this.tab + '_canvas_json');
            textarea = box && (box.querySelector('textarea') || box.querySelector('input[type=text]'));
            if (!textarea) return false;
            this.attachTextarea(textarea);
        }
        var mount = this.host.querySelector('.omost-canvas-editor-mount') || this.host;
        if (this.root.parentNode !== mount) {
            mount.appendChild(this.root);
            this.layout();
        }
        this.attachSliders();
        if (!this.drag && !this.pendingWrite) this.readText(this.textarea.value);
        this.readImageSize();
        if (this.canvasWrap.clientWidth !== this.cssWrapWidth) this.layout();
        return true;
    };

    Editor.prototype.attachTextarea = function (textarea) {
        var self = this;
        this.textarea = textarea;
        this.lastText = null;
        // An edit in progress (a drag, text typed but not yet written) wins over text arriving meanwhile.
        var onChange = function () { if (!self.drag && !self.pendingWrite) self.readText(textarea.value); };
        textarea.addEventListener('input', onChange);
        textarea.addEventListener('change', onChange);
    };

    Editor.prototype.attachSliders = function () {
        var self = this;
        [this.tab + '_width', this.tab + '_height'].forEach(function (id) {
            var box = findById(id);
            if (!box) return;
            box.querySelectorAll('input').forEach(function (input) {
                if (self.sliderInputs.indexOf(input) >= 0) return;
                self.sliderInputs.push(input);
                input.addEventListener('input', function () { self.readImageSize(); });
                input.addEventListener('change', function () { self.readImageSize(); });
            });
        });
        this.sliderInputs = this.sliderInputs.filter(function (input) { return input.isConnected; });
    };

    Editor.prototype.readImageSize = function () {
        var w = readSliderValue(this.tab + '_width'), h = readSliderValue(this.tab + '_height');
        if (w === null || h === null) return;
        if (w !== this.imageSize[0] || h !== this.imageSize[1]) {
            this.imageSize = [w, h];
            this.layout();
        }
    };

    /* Read the textarea; bad text leaves the last good canvas drawn and the text untouched. */
    Editor.prototype.readText = function (text) {
        if (text === this.lastText) return;
        this.lastText = text;
        var m = model();
        var res = m.parseCanvasText(text);
        if (!res.ok) {
            this.error = res.message;
            this.refresh();
            return;
        }
        this.error = null;
        this.note = res.note;
        if (this.doc && m.sameCanvas(res.doc, this.doc)) {
            this.refresh();
            return;
        }
        if (this.doc) this.pushUndo('external');
        this.doc = res.doc;
        if (this.selected >= this.doc.regions.length) this.selected = -1;
        this.refresh();
    };

    Editor.prototype.writeNow = function () {
        if (this.pendingWrite) {
            clearTimeout(this.pendingWrite);
            this.pendingWrite = null;
        }
        if (!this.textarea || !this.doc) return;
        var text = model().serialize(this.doc);
        if (text === this.textarea.value) {
            this.lastText = text;
            return;
        }
        this.lastText = text;
        this.textarea.value = text;
        notifyInput(this.textarea);
    };

    Editor.prototype.scheduleWrite = function () {
        var self = this;
        if (this.pendingWrite) clearTimeout(this.pendingWrite);
        this.pendingWrite = setTimeout(function () { self.pendingWrite = null; self.writeNow(); }, TEXT_DEBOUNCE_MS);
    };

    // ---- edits, undo and redo ------------------------------------------------------------------------

    Editor.prototype.pushUndo = function (group) {
        if (group && group === this.groupKey) return;
        this.groupKey = group || null;
        this.undoStack.push(model().serialize(this.doc));
        if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
        this.redoStack = [];
    };

    Editor.prototype.endGroup = function () {
        this.groupKey = null;
        if (this.pendingWrite) this.writeNow();
    };

    /* Apply mutate(copy) as one undoable edit (or part of the open group); false when it changed nothing. */
    Editor.prototype.edit = function (mutate, options) {
        options = options || {};
        if (this.error || !this.doc) return false;
        var m = model();
        var next = m.clone(this.doc);
        var result = mutate(next);
        if (result === false || m.canonical(next) === m.canonical(this.doc)) return false;
        this.pushUndo(options.group);
        this.doc = next;
        if (options.debounce) this.scheduleWrite(); else this.writeNow();
        this.refresh(options.keepForm);
        return true;
    };

    Editor.prototype.undo = function () { this.history(this.undoStack, this.redoStack); };
    Editor.prototype.redo = function () { this.history(this.redoStack, this.undoStack); };

    Editor.prototype.history = function (from, to) {
        if (this.error || !from.length) return;
        if (this.pendingWrite) this.writeNow();
        var m = model();
        to.push(m.serialize(this.doc));
        this.doc = JSON.parse(from.pop());
        this.groupKey = null;
        if (this.selected >= this.doc.regions.length) this.selected = this.doc.regions.length - 1;
        this.writeNow();
        this.refresh();
    };

    Editor.prototype.action = function (name) {
        var self = this, m = model(), sel = this.selected;
        var hasSel = this.doc && sel >= 0 && sel < this.doc.regions.length;
        switch (name) {
        case 'add':
            this.edit(function (doc) { self.selected = m.addRegion(doc); });
            break;
        case 'duplicate':
            if (hasSel) this.edit(function (doc) { self.selected = m.duplicateRegion(doc, sel); });
            break;
        case 'delete':
            if (hasSel) {
                this.edit(function (doc) {
                    m.deleteRegion(doc, sel);
                    self.selected = Math.min(sel, doc.regions.length - 1);
                });
            }
            break;
        case 'farther':
        case 'nearer':
            if (hasSel) this.edit(function (doc) { return m.reorder(doc, sel, name); });
            break;
        case 'undo': this.undo(); break;
        case 'redo': this.redo(); break;
        case 'restore':
            if (this.doc) {
                this.error = null;
                this.lastText = null;
                this.writeNow();
                this.refresh();
            }
            break;
        case 'bg-file': this.fileInput.click(); break;
        case 'bg-result': this.useLastResult(); break;
        case 'bg-clear': this.background = null; this.fileInput.value = ''; this.render(); break;
        default: throw new Error('omost canvas editor: unknown action ' + name);
        }
    };

    Editor.prototype.select = function (index) {
        if (this.selected !== index) this.endGroup();
        this.selected = index;
        this.refresh();
    };

    Editor.prototype.onFieldInput = function (field, value) {
        var sel = this.selected;
        this.edit(function (doc) {
            var target = sel >= 0 ? doc.regions[sel] : doc.global;
            if (field === 'negative' && !value) { delete target.negative; return; }   // no key when empty
            target[field] = field === 'detailed_descriptions'
                ? value.split('\n').map(function (s) { return s.trim(); }).filter(Boolean)
                : value;
        }, { group: 'field:' + sel + ':' + field, debounce: true, keepForm: true });
    };

    Editor.prototype.onNumberChange = function (field, input) {
        var sel = this.selected, m = model();
        var region = this.doc && sel >= 0 ? this.doc.regions[sel] : null;
        if (!region || this.error) return;
        var v = parseFloat(input.value), side = RECT_SIDES.indexOf(field), rect = region.rect.slice();
        if (side >= 0) rect[side] = v;
        var problem = !isFinite(v) ? 'needs a number'
            : field === 'distance' ? (v > 0 ? '' : 'needs a number > 0')
            : field === 'weight' ? (v >= 0 && v <= 2 ? '' : 'needs 0 to 2')
            : (v >= 0 && v <= m.GRID && rect[0] < rect[1] && rect[2] < rect[3] ? ''
                : 'needs 0 to 90 with top < bottom and left < right');
        input.classList.toggle('omost-ce-invalid', !!problem);
        this.setFlash(problem ? field + ': ' + input.value + ' is not allowed (' + problem + ')' : '');
        if (problem) return;
        this.edit(function (doc) {
            var r = doc.regions[sel];
            if (side >= 0) return m.setRegionRect(r, rect);
            r[field] = v;
        });
    };

    Editor.prototype.setColor = function (name) {
        var sel = this.selected;
        this.edit(function (doc) { (sel >= 0 ? doc.regions[sel] : doc.global).color = name; });
    };

    Editor.prototype.filterPalette = function () {
        var shown = model().matchColorNames(this.colorFilter.value);
        this.palette.querySelectorAll('[data-color]').forEach(function (sw) {
            sw.hidden = shown.indexOf(sw.getAttribute('data-color')) < 0;
        });
    };

    Editor.prototype.nudge = function (dx, dy) {
        var sel = this.selected, m = model();
        if (sel < 0) return;
        this.edit(function (doc) {
            var r = doc.regions[sel];
            return m.setRegionRect(r, m.moveRect(r.rect, dx, dy, false));
        });
    };

    Editor.prototype.onKey = function (e) {
        var target = e.target;
        var inText = isTextEntry(target);
        var mod = e.ctrlKey || e.metaKey;
        var key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
        var handled = true;
        if (mod && !e.altKey && key === 'z' && !inText) {
            if (e.shiftKey) this.redo(); else this.undo();
        } else if (mod && !e.altKey && key === 'y' && !inText) {
            this.redo();
        } else if (target === this.canvas && !mod && !e.altKey) {
            var step = e.shiftKey ? 5 : 1;
            var arrows = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
            if (arrows[e.key]) this.nudge(arrows[e.key][0], arrows[e.key][1]);
            else if (e.key === 'Delete' || e.key === 'Backspace') this.action('delete');
            else if (e.key === 'Escape') this.select(-1);
            else handled = false;
        } else {
            handled = false;
        }
        if (handled) {
            e.preventDefault();
            e.stopPropagation();
        }
    };

    // ---- pointer interaction -------------------------------------------------------------------------

    Editor.prototype.rectOf = function (i) {
        return this.drag && this.drag.index === i && this.drag.rect ? this.drag.rect : this.doc.regions[i].rect;
    };

    Editor.prototype.rectPx = function (rect) {
        var s = this.cssSize, g = model().GRID;
        return { x0: rect[2] / g * s[0], x1: rect[3] / g * s[0], y0: rect[0] / g * s[1], y1: rect[1] / g * s[1] };
    };

    /* Which edges of rect i lie within the tolerance of (x, y); null when the point is off the box. */
    Editor.prototype.edgesAt = function (i, x, y) {
        var p = this.rectPx(this.rectOf(i)), t = EDGE_TOLERANCE_PX;
        if (x < p.x0 - t || x > p.x1 + t || y < p.y0 - t || y > p.y1 + t) return null;
        var dl = Math.abs(x - p.x0), dr = Math.abs(x - p.x1), dt = Math.abs(y - p.y0), db = Math.abs(y - p.y1);
        return {
            left: dl <= t && dl <= dr, right: dr <= t && dr < dl,
            top: dt <= t && dt <= db, bottom: db <= t && db < dt
        };
    };

    function anyEdge(edges) { return edges && (edges.left || edges.right || edges.top || edges.bottom); }

    /* The selected box's edges first, then the nearest box under the point (edge = resize, inside = move). */
    Editor.prototype.hitTest = function (x, y) {
        var sel = this.selected;
        if (sel >= 0) {
            var e0 = this.edgesAt(sel, x, y);
            if (anyEdge(e0)) return { index: sel, edges: e0 };
        }
        var order = model().orderedIndices(this.doc).reverse();
        for (var k = 0; k < order.length; k++) {
            var i = order[k], edges = this.edgesAt(i, x, y);
            if (!edges) continue;
            if (anyEdge(edges)) return { index: i, edges: edges };
            var p = this.rectPx(this.rectOf(i));
            if (x >= p.x0 && x < p.x1 && y >= p.y0 && y < p.y1) return { index: i, edges: null };
        }
        return null;
    };

    function cursorFor(edges) {
        if (!edges) return 'move';
        var v = edges.top ? 'n' : edges.bottom ? 's' : '', h = edges.left ? 'w' : edges.right ? 'e' : '';
        if (v && h) return (v + h === 'nw' || v + h === 'se') ? 'nwse-resize' : 'nesw-resize';
        return v ? 'ns-resize' : 'ew-resize';
    }

    Editor.prototype.pointerPos = function (e) {
        var b = this.canvas.getBoundingClientRect();
        return [e.clientX - b.left - this.canvas.clientLeft, e.clientY - b.top - this.canvas.clientTop];
    };

    Editor.prototype.onPointerDown = function (e) {
        if (e.button !== 0 || !this.doc) return;
        this.canvas.focus();
        if (this.error) return;
        var pos = this.pointerPos(e), hit = this.hitTest(pos[0], pos[1]);
        this.endGroup();
        if (!hit) {
            this.select(-1);
            return;
        }
        this.select(hit.index);
        this.drag = { index: hit.index, edges: hit.edges, start: pos, orig: this.doc.regions[hit.index].rect.slice(), rect: null };
        if (this.canvas.setPointerCapture) this.canvas.setPointerCapture(e.pointerId);
        e.preventDefault();
    };

    Editor.prototype.onPointerMove = function (e) {
        if (!this.doc) return;
        var pos = this.pointerPos(e), m = model();
        if (!this.drag) {
            var hit = this.error ? null : this.hitTest(pos[0], pos[1]);
            this.canvas.style.cursor = hit ? cursorFor(hit.edges) : 'default';
            return;
        }
        var d = this.drag;
        var dx = (pos[0] - d.start[0]) / this.cssSize[0] * m.GRID, dy = (pos[1] - d.start[1]) / this.cssSize[1] * m.GRID;
        var snap = this.snap !== e.altKey;
        d.rect = d.edges ? m.resizeRect(d.orig, d.edges, dx, dy, snap) : m.moveRect(d.orig, dx, dy, snap);
        this.render();
        this.showStatus(d.rect);
    };

    Editor.prototype.onPointerUp = function (e, commit) {
        var d = this.drag, m = model();
        if (!d) return;
        this.drag = null;
        if (this.canvas.releasePointerCapture && this.canvas.hasPointerCapture && this.canvas.hasPointerCapture(e.pointerId)) {
            this.canvas.releasePointerCapture(e.pointerId);
        }
        if (commit && d.rect) {
            this.edit(function (doc) { return m.setRegionRect(doc.regions[d.index], d.rect); });
        }
        this.refresh();
    };

    // ---- background image ----------------------------------------------------------------------------

    Editor.prototype.setBackgroundSrc = function (src) {
        var self = this, img = new Image();
        img.onload = function () { self.background = img; self.setFlash(''); self.render(); };
        img.onerror = function () { self.setFlash('Could not load that image as a background.'); };
        img.src = src;
    };

    Editor.prototype.loadBackgroundFile = function (file) {
        if (!file) return;
        var self = this, reader = new FileReader();
        reader.onload = function () { self.setBackgroundSrc(reader.result); };
        reader.onerror = function () { self.setFlash('Could not read ' + file.name + '.'); };
        reader.readAsDataURL(file);
    };

    Editor.prototype.useLastResult = function () {
        var gallery = findById(this.tab + '_gallery');
        var img = gallery && (gallery.querySelector('.preview img') || gallery.querySelector('img'));
        if (!img || !img.src) {
            this.setFlash('No result image in the ' + this.tab + ' gallery yet.');
            return;
        }
        this.setBackgroundSrc(img.src);
    };

    // ---- drawing -------------------------------------------------------------------------------------

    /* Size the canvas to the image's aspect ratio within the available width. */
    Editor.prototype.layout = function () {
        var avail = this.canvasWrap.clientWidth;
        this.cssWrapWidth = avail;
        if (!avail) return;
        var aspect = this.imageSize[0] / this.imageSize[1];
        var w = avail, h = w / aspect;
        if (h > MAX_CANVAS_HEIGHT_PX) {
            h = MAX_CANVAS_HEIGHT_PX;
            w = h * aspect;
        }
        w = Math.max(1, Math.round(w));
        h = Math.max(1, Math.round(h));
        var dpr = window.devicePixelRatio || 1, bw = Math.round(w * dpr), bh = Math.round(h * dpr);
        this.cssSize = [w, h];
        this.canvas.style.width = w + 'px';
        this.canvas.style.height = h + 'px';
        if (this.canvas.width !== bw || this.canvas.height !== bh) {
            this.canvas.width = this.composite.width = bw;
            this.canvas.height = this.composite.height = bh;
        }
        this.render();
    };

    Editor.prototype.refresh = function (keepForm) {
        this.render();
        this.renderList();
        if (!keepForm) this.renderForm();
        this.renderMessages();
    };

    /* Global colour, then boxes far to near as 0.7 colour over 0.3 of what is below (OMOST.md). */
    Editor.prototype.drawComposite = function () {
        var m = model(), c = this.composite.getContext('2d');
        var sx = this.composite.width / m.GRID, sy = this.composite.height / m.GRID;
        c.setTransform(1, 0, 0, 1, 0, 0);
        c.globalAlpha = 1;
        c.fillStyle = m.cssColor(this.doc.global.color);
        c.fillRect(0, 0, this.composite.width, this.composite.height);
        c.globalAlpha = 0.7;
        var self = this;
        m.orderedIndices(this.doc).forEach(function (i) {
            var r = self.rectOf(i);
            var x0 = Math.round(r[2] * sx), x1 = Math.round(r[3] * sx), y0 = Math.round(r[0] * sy), y1 = Math.round(r[1] * sy);
            c.fillStyle = m.cssColor(self.doc.regions[i].color);
            c.fillRect(x0, y0, x1 - x0, y1 - y0);
        });
        c.globalAlpha = 1;
    };

    Editor.prototype.render = function () {
        var m = model(), ctx = this.ctx, w = this.cssSize[0], h = this.cssSize[1];
        if (!this.doc || !w || !h) return;
        var dpr = this.canvas.width / w;
        this.drawComposite();
        ctx.setTransform(1, 0, 0, 1, 0, 0);
        ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
        if (this.background) {
            drawCover(ctx, this.background, this.canvas.width, this.canvas.height);
            ctx.globalAlpha = this.overlayOpacity;
        }
        ctx.drawImage(this.composite, 0, 0);
        ctx.globalAlpha = 1;
        ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
        if (this.showGrid) this.drawGrid(w, h);
        var self = this;
        m.orderedIndices(this.doc).forEach(function (i) { self.drawOutline(i); });
        if (this.selected >= 0 && this.selected < this.doc.regions.length) this.drawSelection(this.selected);
        this.canvas.classList.toggle('omost-ce-stale', !!this.error);
    };

    function drawCover(ctx, img, w, h) {
        var s = Math.max(w / img.naturalWidth, h / img.naturalHeight);
        var sw = w / s, sh = h / s;
        ctx.drawImage(img, (img.naturalWidth - sw) / 2, (img.naturalHeight - sh) / 2, sw, sh, 0, 0, w, h);
    }

    Editor.prototype.drawGrid = function (w, h) {
        var ctx = this.ctx, g = model().GRID;
        ctx.strokeStyle = 'rgba(128, 128, 128, 0.35)';
        ctx.lineWidth = 1;
        ctx.beginPath();
        for (var u = 10; u < g; u += 10) {
            var x = Math.round(u / g * w) + 0.5, y = Math.round(u / g * h) + 0.5;
            ctx.moveTo(x, 0); ctx.lineTo(x, h);
            ctx.moveTo(0, y); ctx.lineTo(w, y);
        }
        ctx.stroke();
    };

    Editor.prototype.drawOutline = function (i) {
        var ctx = this.ctx, m = model(), region = this.doc.regions[i], p = this.rectPx(this.rectOf(i));
        ctx.lineWidth = 3;
        ctx.strokeStyle = 'rgba(0, 0, 0, 0.55)';
        ctx.strokeRect(p.x0 + 1.5, p.y0 + 1.5, p.x1 - p.x0 - 3, p.y1 - p.y0 - 3);
        ctx.lineWidth = 1;
        ctx.strokeStyle = m.cssColor(region.color);
        ctx.strokeRect(p.x0 + 1.5, p.y0 + 1.5, p.x1 - p.x0 - 3, p.y1 - p.y0 - 3);
        var label = (i + 1) + '. ' + (region.description || '(no description)');   // program order, as everywhere
        ctx.font = '12px sans-serif';
        var maxW = p.x1 - p.x0 - 8;
        if (maxW < 12) return;
        while (label.length > 1 && ctx.measureText(label).width > maxW) label = label.slice(0, -2) + '…';
        var tw = ctx.measureText(label).width;
        ctx.fillStyle = 'rgba(0, 0, 0, 0.6)';
        ctx.fillRect(p.x0 + 3, p.y0 + 3, tw + 6, 16);
        ctx.fillStyle = '#fff';
        ctx.textBaseline = 'middle';
        ctx.fillText(label, p.x0 + 6, p.y0 + 11);
    };

    Editor.prototype.drawSelection = function (i) {
        var ctx = this.ctx, p = this.rectPx(this.rectOf(i));
        ctx.lineWidth = 2;
        ctx.setLineDash([6, 4]);
        ctx.strokeStyle = '#fff';
        ctx.strokeRect(p.x0 + 1, p.y0 + 1, p.x1 - p.x0 - 2, p.y1 - p.y0 - 2);
        ctx.lineDashOffset = 5;
        ctx.strokeStyle = '#000';
        ctx.strokeRect(p.x0 + 1, p.y0 + 1, p.x1 - p.x0 - 2, p.y1 - p.y0 - 2);
        ctx.setLineDash([]);
        ctx.lineDashOffset = 0;
        var xs = [p.x0, (p.x0 + p.x1) / 2, p.x1], ys = [p.y0, (p.y0 + p.y1) / 2, p.y1];
        ctx.lineWidth = 1;
        xs.forEach(function (x, a) {
            ys.forEach(function (y, b) {
                if (a === 1 && b === 1) return;
                ctx.fillStyle = '#fff';
                ctx.fillRect(x - 4, y - 4, 8, 8);
                ctx.strokeStyle = '#000';
                ctx.strokeRect(x - 3.5, y - 3.5, 7, 7);
            });
        });
    };

    Editor.prototype.renderList = function () {
        var self = this, m = model();
        if (!this.doc) return;
        this.list.textContent = '';
        var row = function (index, title, detail, color) {
            var li = el('li', {}, [el('button', {
                type: 'button', className: 'omost-ce-row' + (index === self.selected ? ' omost-ce-selected' : ''),
                'data-index': String(index), 'aria-pressed': String(index === self.selected)
            }, [
                el('span', { className: 'omost-ce-swatch', style: 'background-color: ' + m.cssColor(color) }),
                el('span', { className: 'omost-ce-row-title', text: title }),
                el('span', { className: 'omost-ce-row-detail', text: detail })
            ])]);
            li.firstChild.addEventListener('click', function () { self.select(index); });
            self.list.appendChild(li);
        };
        row(-1, 'Global: ' + (this.doc.global.description || '(no description)'), '', this.doc.global.color);
        m.orderedIndices(this.doc).forEach(function (i) {     // listed far to near, numbered in program order
            var r = self.doc.regions[i];
            row(i, (i + 1) + '. ' + (r.description || '(no description)'), 'd ' + r.distance, r.color);
        });
    };

    Editor.prototype.renderForm = function () {
        var self = this, m = model();
        if (!this.doc) return;
        var sel = this.selected, isRegion = sel >= 0;
        var target = isRegion ? this.doc.regions[sel] : this.doc.global;
        var active = activeElementOf(this.form);
        this.formTitle.textContent = isRegion ? 'Region ' + (sel + 1) : 'Global';
        this.form.querySelectorAll('[data-for]').forEach(function (label) {
            var f = label.getAttribute('data-for');
            label.hidden = !isRegion && GLOBAL_FIELDS.indexOf(f) < 0;
        });
        var set = function (name, value) {
            var input = self.fields[name];
            if (input !== active) {
                input.value = value;
                input.classList.remove('omost-ce-invalid');
            }
        };
        GLOBAL_FIELDS.concat(isRegion ? ['atmosphere', 'style', 'quality_meta'] : []).forEach(function (f) {
            set(f, f === 'detailed_descriptions' ? target[f].join('\n') : target[f] || '');
        });
        if (isRegion) {
            set('distance', String(target.distance));
            set('weight', String(target.weight === undefined ? 1 : target.weight));
            RECT_SIDES.forEach(function (f, k) { set(f, String(target.rect[k])); });
            this.geometryNote.textContent = target.location !== null && target.offset !== null && target.area !== null
                ? 'Placed as: ' + target.location + ', ' + target.offset + ', ' + target.area
                : 'Free rectangle';
        } else {
            this.geometryNote.textContent = '';
        }
        this.geometryNote.hidden = !isRegion;
        var rgb = m.colorRgb(target.color);
        this.colorSwatch.style.backgroundColor = m.cssColor(target.color);
        this.colorLabel.textContent = typeof target.color === 'string' ? target.color : 'rgb(' + rgb.join(', ') + ')';
        this.palette.querySelectorAll('[data-color]').forEach(function (sw) {
            var on = sw.getAttribute('data-color') === target.color;
            sw.classList.toggle('omost-ce-selected', on);
            sw.setAttribute('aria-selected', String(on));
        });
        this.showStatus(isRegion ? this.rectOf(sel) : null);
    };

    Editor.prototype.showStatus = function (rect) {
        this.statusLine.textContent = (rect ? 'rect [top, bottom, left, right] = [' + rect.join(', ') + ']\n' : '') +
            'Drag a box to move it, its edges or corners to resize; arrows nudge (Shift: 5 units); ' +
            (this.snap ? 'snapping to the 90-grid (Alt: free)' : 'free (Alt: snap)') + '.';
    };

    Editor.prototype.setFlash = function (text) {
        this.flash = text;
        this.renderMessages();
    };

    Editor.prototype.renderMessages = function () {
        var locked = !!this.error;
        this.errorBox.hidden = !locked;
        this.errorText.textContent = locked
            ? this.error + (this.doc ? ' — the editor shows the last good canvas and is locked until the text is fixed.' : '')
            : '';
        this.errorBox.querySelector('[data-action=restore]').hidden = !this.doc;
        var note = [this.note, this.flash].filter(Boolean).join(' ');
        this.noteBox.textContent = note;
        this.noteBox.hidden = !note;
        this.root.classList.toggle('omost-ce-locked', locked);
        var sel = this.doc && this.selected >= 0;
        var enabled = {
            add: !locked && !!this.doc, duplicate: !locked && sel, delete: !locked && sel,
            farther: !locked && sel, nearer: !locked && sel,
            undo: !locked && this.undoStack.length > 0, redo: !locked && this.redoStack.length > 0
        };
        this.root.querySelectorAll('.omost-ce-toolbar [data-action]').forEach(function (b) {
            var a = b.getAttribute('data-action');
            if (a in enabled) b.disabled = !enabled[a];
        });
        this.form.querySelectorAll('input, textarea, button').forEach(function (input) { input.disabled = locked; });
    };

    // ---- page-level mounting -------------------------------------------------------------------------

    var editors = {};
    var pollTimer = null;

    /* Mount (or re-mount after Gradio re-rendered) an editor for every tab whose elements exist. */
    function mountAll() {
        if (!pollTimer) pollTimer = setInterval(mountAll, POLL_MS);
        if (!ns.model) return;  // omost_canvas_model.js not run yet
        TABS.forEach(function (tab) {
            if (!editors[tab]) {
                if (!findById('omost_' + tab + '_canvas_editor') || !findById('omost_' + tab + '_canvas_json')) return;
                editors[tab] = new Editor(tab);
            }
            editors[tab].sync();
        });
    }

    ns.Editor = Editor;
    ns.editors = editors;
    ns.mountAll = mountAll;

    if (typeof onUiLoaded === 'function') onUiLoaded(mountAll);
    if (typeof onUiUpdate === 'function') onUiUpdate(function () { if (!pollTimer) mountAll(); });
    if (document.readyState === 'loading') {
        document.addEventListener('DOMContentLoaded', function () { setTimeout(mountAll, 0); });
    } else {
        setTimeout(mountAll, 0);
    }
})();
