// The canvas editor under Gradio's REAL stylesheets, checked through computed styles and pixels (headless Chromium).
// Run through pytest (tests/test_browser_gradio_css.py): it prepares Gradio 4.40's and 3.41.2's stylesheets and
// theme variables (never committed) and passes their list in OMOST_GRADIO_CSS. The page (gradio_page.html)
// mounts the editor where the WebUI does, inside gradio-app > .gradio-container.gradio-container-<version>, with
// Gradio's stylesheets in the head and the extension's style.css at the end of <body> (the WebUI's order).
// OMOST_STYLE_CSS replaces style.css (to show that an older one fails); OMOST_WEBUI_STYLE adds a WebUI's own
// style.css before it. Screenshots and the measured styles go to tests/artifacts/ (git-ignored).
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const JS_DIR = path.join(REPO, 'javascript');
const ARTIFACTS = path.join(REPO, 'tests', 'artifacts');
const CHROMIUM = process.env.OMOST_CHROMIUM || '/usr/bin/chromium';
const STYLE_CSS = process.env.OMOST_STYLE_CSS || path.join(REPO, 'style.css');
const WEBUI_STYLE = process.env.OMOST_WEBUI_STYLE || '';
const MANIFEST = process.env.OMOST_GRADIO_CSS || '';
const SETS = MANIFEST ? JSON.parse(fs.readFileSync(MANIFEST, 'utf8')) : [];
const DRAGON = JSON.parse(fs.readFileSync(path.join(HERE, 'fixtures', 'dragon.json'), 'utf8'));
const TOOLBAR_ACTIONS = ['add', 'duplicate', 'delete', 'farther', 'nearer', 'undo', 'redo'];

const jsFiles = () => fs.readdirSync(JS_DIR).filter((f) => /^omost_[\w.-]*\.js$/.test(f)).sort();
const escapeHtml = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

let server;
let origin;
let browser;

function pageHtml(set, index, dark, styleFirst) {
    const links = [`<link rel="stylesheet" href="/gradio/${index}/theme.css">`]
        .concat(set.css.map((_, k) => `<link rel="stylesheet" href="/gradio/${index}/${k}.css">`)).join('\n');
    const webui = (WEBUI_STYLE ? '<link rel="stylesheet" href="/webui-style.css">\n' : '') + '<link rel="stylesheet" href="/style.css">';
    const [first, last] = styleFirst ? [webui, ''] : ['', webui];
    const scripts = jsFiles().map((f) => `<script src="/javascript/${f}"></script>`).join('\n');
    return fs.readFileSync(path.join(HERE, 'gradio_page.html'), 'utf8')
        .replace('<!--GRADIO_CSS-->', first + '\n' + links)
        .replace('<!--CONTAINER-->', set.container)
        // Gradio 3's HTML component repeats the elem_id on its .prose div; Gradio 4's does not
        .replace('<!--PROSE_ID-->', set.version.startsWith('3.') ? ' id="omost_txt2img_canvas_editor"' : '')
        .replace('<!--BODY_CLASS-->', dark ? 'dark' : '')
        .replace('<!--SCRIPTS-->', scripts)
        .replace('<!--CANVAS-->', escapeHtml(JSON.stringify(DRAGON, null, 2)))
        .replace('<!--WEBUI_CSS-->', last);
}

function startServer() {
    return new Promise((resolve) => {
        server = http.createServer((req, res) => {
            const url = new URL(req.url, 'http://127.0.0.1');
            const send = (type, body) => { res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }); res.end(body); };
            if (url.pathname === '/page.html') {
                const index = Number(url.searchParams.get('set'));
                return send('text/html; charset=utf-8', pageHtml(SETS[index], index, url.searchParams.get('dark') === '1', url.searchParams.get('style') === 'first'));
            }
            const css = /^\/gradio\/(\d+)\/(theme|\d+)\.css$/.exec(url.pathname);
            if (css && SETS[Number(css[1])]) {
                const set = SETS[Number(css[1])];
                const file = css[2] === 'theme' ? set.theme : set.css[Number(css[2])];
                if (file) return send('text/css', fs.readFileSync(file));
            }
            const js = /^\/javascript\/(omost_[\w.-]*\.js)$/.exec(url.pathname);
            if (js && jsFiles().includes(js[1])) return send('text/javascript', fs.readFileSync(path.join(JS_DIR, js[1])));
            if (url.pathname === '/style.css') return send('text/css', fs.readFileSync(STYLE_CSS));
            if (url.pathname === '/webui-style.css' && WEBUI_STYLE) return send('text/css', fs.readFileSync(WEBUI_STYLE));
            res.writeHead(404);
            res.end('not found');
        });
        server.listen(0, '127.0.0.1', () => {
            origin = `http://127.0.0.1:${server.address().port}`;
            resolve();
        });
    });
}

before(async () => {
    if (!SETS.length) return;
    await startServer();
    browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
            '--disable-component-update', '--disable-sync', '--no-first-run']
    });
});

after(async () => {
    if (browser) await browser.close();
    if (server) server.close();
});

/* A fresh page with the editor mounted under stylesheet set `index`; every stylesheet must have loaded. */
async function openPage(index, { dark = false, styleFirst = false } = {}) {
    const context = await browser.newContext({ viewport: { width: 820, height: 1400 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    const failed = [];
    const errors = [];
    page.on('requestfailed', (r) => failed.push(r.url()));
    page.on('response', (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`${origin}/page.html?set=${index}&dark=${dark ? 1 : 0}&style=${styleFirst ? 'first' : 'last'}`);
    await page.waitForFunction(() => {
        const ed = window.omostCanvasEditor && window.omostCanvasEditor.editors.txt2img;
        return ed && ed.canvas.isConnected && ed.cssSize[0] > 0 && window.__uiLoadedDone;
    });
    // the selected row shows its form (and its palette) as a user sees it after a click
    await page.click('#omost_txt2img_canvas_editor .omost-ce-row[data-index="1"]');
    const sheets = await page.evaluate(() => document.styleSheets.length);
    // a WebUI's style.css @imports its fonts from /webui-assets/, which this server does not have
    assert.deepEqual(failed.filter((u) => !u.includes('/webui-assets/')), [], 'every stylesheet and script loaded');
    assert.deepEqual(errors, [], 'no uncaught errors');
    assert.equal(sheets, SETS[index].css.length + 2 + (WEBUI_STYLE ? 1 : 0), 'Gradio\'s stylesheets, its theme and style.css are in the page');
    return page;
}

/* Computed styles of the editor's parts (numbers in px; colours as [r, g, b, a]). */
function measure(page) {
    return page.evaluate((actions) => {
        const root = document.querySelector('#omost_txt2img_canvas_editor .omost-ce');
        const rgba = (s) => {
            const m = /rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)/.exec(s);
            return m ? [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]] : null;
        };
        const box = (el) => { const b = el.getBoundingClientRect(); return { x: b.left, y: b.top, w: b.width, h: b.height }; };
        const sides = (cs, prop) => ['top', 'right', 'bottom', 'left'].map((s) => parseFloat(cs.getPropertyValue(prop.replace('*', s))));
        const style = (el) => {
            const cs = getComputedStyle(el);
            return {
                padding: sides(cs, 'padding-*'), margin: sides(cs, 'margin-*'),
                border: sides(cs, 'border-*-width'), borderStyle: cs.borderLeftStyle, borderColor: rgba(cs.borderLeftColor),
                background: rgba(cs.backgroundColor), backgroundImage: cs.backgroundImage,
                color: rgba(cs.color), appearance: cs.appearance, accent: cs.accentColor, display: cs.display, fontSize: parseFloat(cs.fontSize),
                listStyle: cs.listStyle, tag: el.tagName, box: box(el)
            };
        };
        /* The colour painted behind an element: the first ancestor background that is not transparent. */
        const behind = (el) => {
            for (let e = el.parentElement; e; e = e.parentElement) {
                const c = rgba(getComputedStyle(e).backgroundColor);
                if (c && c[3] > 0) return c;
            }
            return [255, 255, 255, 1];
        };
        return {
            page: behind(root),
            fontSize: parseFloat(getComputedStyle(root).fontSize),
            buttons: actions.map((a) => ({ action: a, text: root.querySelector(`[data-action=${a}]`).textContent, ...style(root.querySelector(`[data-action=${a}]`)) })),
            checkboxes: ['snap', 'grid'].map((o) => ({ option: o, checked: root.querySelector(`[data-option=${o}]`).checked, ...style(root.querySelector(`[data-option=${o}]`)) })),
            rows: Array.from(root.querySelectorAll('.omost-ce-row')).map((r) => ({ index: r.dataset.index, selected: r.classList.contains('omost-ce-selected'), ...style(r) })),
            rowSwatches: Array.from(root.querySelectorAll('.omost-ce-row .omost-ce-swatch')).map((s) => ({ inline: rgba(s.style.backgroundColor), ...style(s) })),
            palette: Array.from(root.querySelectorAll('.omost-ce-palette-item')).map((s) => ({ name: s.dataset.color, inline: rgba(s.style.backgroundColor), ...style(s) })),
            fields: Array.from(root.querySelectorAll('.omost-ce-field input, .omost-ce-field textarea')).filter((e) => e.offsetParent).map((e) => ({ name: e.name || e.type, ...style(e) })),
            list: style(root.querySelector('.omost-ce-list')),
            listItems: Array.from(root.querySelectorAll('.omost-ce-list > li')).map((li) => ({ marker: getComputedStyle(li, '::marker').content, before: getComputedStyle(li, '::before').content, ...style(li) }))
        };
    }, TOOLBAR_ACTIONS);
}

/* RGBA pixels of a page area (CSS px at deviceScaleFactor 1), decoded from a screenshot inside the page. */
async function pixels(page, clip) {
    const png = await page.screenshot({ clip });
    return page.evaluate(async (b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
        const c = new OffscreenCanvas(bitmap.width, bitmap.height);
        const ctx = c.getContext('2d');
        ctx.drawImage(bitmap, 0, 0);
        return { w: bitmap.width, h: bitmap.height, data: Array.from(ctx.getImageData(0, 0, bitmap.width, bitmap.height).data) };
    }, png.toString('base64'));
}

const rgb = (c) => c.slice(0, 3);
const diff = (a, b) => Math.max(...[0, 1, 2].map((k) => Math.abs(a[k] - b[k])));
const luminance = (c) => {
    const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
};
const contrast = (a, b) => { const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
/* The colours an element's background paints: its background colour, else the colours of its gradient. */
function paintColors(s, fallback) {
    const stops = (s.backgroundImage.match(/rgba?\([^)]*\)/g) || []).map((c) => c.match(/[\d.]+/g).map(Number)).map((c) => (c.length === 3 ? [...c, 1] : c));
    if (s.background && s.background[3] > 0) return [s.background];
    return stops.length ? stops : [fallback];
}
const fmt = (o) => JSON.stringify(o);

/* Share of an area's pixels that differ (any channel by more than `by`) between two pixel sets, or from a colour. */
function shareDiffering(a, b, by) {
    let n = 0;
    for (let i = 0; i < a.data.length; i += 4) {
        const other = Array.isArray(b) ? b : b.data.slice(i, i + 3);
        if (diff(a.data.slice(i, i + 3), other) > by) n++;
    }
    return n / (a.data.length / 4);
}

async function checkboxPixels(page, option) {
    const sel = `#omost_txt2img_canvas_editor [data-option=${option}]`;
    const b = await page.$eval(sel, (e) => { const r = e.getBoundingClientRect(); return { x: r.left, y: r.top, width: r.width, height: r.height }; });
    assert.ok(b.width >= 10 && b.height >= 10, `${option} checkbox is at least 10x10 px: ${fmt(b)}`);
    const set = (v) => page.$eval(sel, (e, value) => { e.checked = value; }, v); // no change event: only the look changes
    const was = await page.$eval(sel, (e) => e.checked);
    await set(true);
    const on = await pixels(page, b);
    await set(false);
    const off = await pixels(page, b);
    await set(was);
    return { on, off, box: b };
}

async function saveScreenshot(page, name) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, name);
    await page.locator('#omost_txt2img_canvas_editor .omost-ce').screenshot({ path: file });
    return file;
}

if (!SETS.length) {
    test('the editor under Gradio\'s stylesheets', { skip: 'OMOST_GRADIO_CSS is not set: run it through pytest tests/test_browser_gradio_css.py, which prepares the stylesheets' }, () => {});
}

/* Two looks per Gradio version: the light theme with style.css where the WebUI puts it (after Gradio's
 * stylesheets), and the dark theme with style.css loaded BEFORE Gradio's, so that no rule wins by load order. */
const VARIANTS = [
    { name: 'light theme, style.css after Gradio\'s stylesheets (the WebUI\'s order)', dark: false, styleFirst: false, suffix: '' },
    { name: 'dark theme, style.css before Gradio\'s stylesheets', dark: true, styleFirst: true, suffix: '_dark' }
];

SETS.forEach((set, index) => VARIANTS.forEach((variant) => {
    describe(`canvas editor inside .${set.container} (Gradio ${set.version}), ${variant.name}`, () => {
        let page;
        let m;
        before(async () => {
            page = await openPage(index, variant);
            m = await measure(page);
            // the measurements, for a look when a check fails (palette entries left out)
            fs.mkdirSync(ARTIFACTS, { recursive: true });
            fs.writeFileSync(path.join(ARTIFACTS, `canvas_editor_gradio${set.version.split('.')[0]}${variant.suffix}.json`),
                JSON.stringify({ ...m, palette: m.palette.slice(0, 3) }, null, 1));
        });
        after(async () => { if (page) await page.context().close(); });

        test('the editor sits inside the Gradio container, in gr.HTML\'s .prose, and Gradio\'s reset is active there', async () => {
            assert.equal(await page.$eval('gradio-app > .gradio-container', (e) => e.classList[1]), set.container);
            const where = await page.$eval('#omost_txt2img_canvas_editor .omost-ce', (e, container) => {
                // a plain button in the same place gets Gradio's reset: no padding, transparent background
                const b = document.createElement('button');
                b.textContent = 'x';
                e.parentElement.appendChild(b);
                const cs = getComputedStyle(b);
                const reset = [cs.paddingLeft, cs.backgroundColor];
                b.remove();
                return { container: !!e.closest(`gradio-app > .gradio-container.${container}`), prose: !!e.closest('.prose.gradio-html'), reset };
            }, set.container);
            assert.deepEqual(where, { container: true, prose: true, reset: ['0px', 'rgba(0, 0, 0, 0)'] });
            assert.ok((luminance(m.page) < 0.1) === variant.dark, `the page colour ${fmt(m.page)} is ${variant.dark ? 'dark' : 'light'}`);
        });

        test('toolbar buttons have padding, a visible border, a background and readable text', () => {
            for (const b of m.buttons) {
                const what = `${b.text} button (${fmt({ padding: b.padding, margin: b.margin, border: b.border, borderStyle: b.borderStyle, borderColor: b.borderColor, background: b.background, backgroundImage: b.backgroundImage, fontSize: b.fontSize })})`;
                assert.ok(b.padding[1] >= 4 && b.padding[3] >= 4 && b.padding[0] >= 1 && b.padding[2] >= 1, `${what}: padding`);
                assert.deepEqual(b.margin, [0, 0, 0, 0], `${what}: margin`);
                assert.ok(b.border.every((w) => w >= 1) && b.borderStyle === 'solid', `${what}: border`);
                assert.ok(b.borderColor[3] > 0 && diff(b.borderColor, m.page) >= 16, `${what}: the border colour shows on the page colour ${fmt(m.page)}`);
                const paint = paintColors(b, [0, 0, 0, 0]);
                assert.ok(paint.every((c) => c[3] > 0), `${what}: background`);
                assert.ok(contrast(b.color, paint[0]) >= 4.5, `${what}: text colour ${fmt(b.color)} on ${fmt(paint[0])}`);
                assert.equal(b.fontSize, m.fontSize, `${what}: the editor's font size`);
            }
        });

        test('toolbar buttons are separate boxes with gaps between them, wider than their text, in one row', async () => {
            const boxes = m.buttons.map((b) => ({ text: b.text, ...b.box }));
            const textWidths = await page.$$eval('#omost_txt2img_canvas_editor .omost-ce-toolbar [data-action]', (els) => Object.fromEntries(els.map((e) => {
                const r = document.createRange();
                r.selectNodeContents(e);
                return [e.dataset.action, r.getBoundingClientRect().width];
            })));
            for (let k = 0; k < boxes.length; k++) {
                const b = boxes[k];
                assert.ok(b.w >= textWidths[TOOLBAR_ACTIONS[k]] + 10, `${b.text}: ${b.w} px wide for ${textWidths[TOOLBAR_ACTIONS[k]]} px of text`);
                assert.ok(b.h >= 18 && b.h <= 28, `${b.text}: ${b.h} px tall`);
                if (k > 0) assert.ok(b.x - (boxes[k - 1].x + boxes[k - 1].w) >= 3, `${boxes[k - 1].text} and ${b.text} are apart: ${fmt(boxes[k - 1])} ${fmt(b)}`);
            }
            const tops = boxes.map((b) => b.y).concat(m.checkboxes.map((c) => c.box.y + c.box.h / 2 - boxes[0].h / 2));
            assert.ok(Math.max(...tops) - Math.min(...tops) < 2, `one row, buttons and checkboxes centred alike: tops ${fmt(tops)}`);
        });

        test('the border of a toolbar button is drawn (pixels)', async () => {
            const add = m.buttons[0].box;
            const strip = await pixels(page, { x: Math.floor(add.x) - 2, y: Math.floor(add.y + add.h / 2), width: 4, height: 1 });
            const outside = strip.data.slice(0, 3);
            const edge = strip.data.slice(8, 11);
            assert.ok(diff(outside, edge) >= 12, `left edge of Add ${fmt(edge)} vs outside ${fmt(outside)}`);
        });

        test('Snap and Grid: checked boxes look checked (native checkboxes in the accent colour)', async () => {
            for (const c of m.checkboxes) {
                assert.equal(c.checked, true, `${c.option} starts checked`);
                const { on, off, box } = await checkboxPixels(page, c.option);
                const changed = shareDiffering(on, off, 60);
                const inked = shareDiffering(on, m.page, 60);
                const what = `${c.option} (${box.width}x${box.height} px, appearance '${c.appearance}', background ${fmt(c.background)} ${c.backgroundImage.slice(0, 30)}; `
                    + `checking it changes ${(changed * 100).toFixed(0)}% of the box, checked it differs from the page colour in ${(inked * 100).toFixed(0)}%)`;
                assert.ok(['auto', 'checkbox'].includes(c.appearance), `${what}: the browser's own checkbox`);
                assert.ok(changed >= 0.25, `${what}: checked and unchecked look different`);
                assert.ok(inked >= 0.3, `${what}: a checked box is filled`);
            }
        });

        test('region list rows have padding, one line each and their own boxes; the list has no numbering or indent', () => {
            assert.equal(m.rows.length, 5);
            for (const r of m.rows) {
                assert.ok(r.padding[1] >= 3 && r.padding[3] >= 3 && r.padding[0] >= 2 && r.padding[2] >= 2, `row ${r.index}: padding ${fmt(r.padding)}`);
                assert.deepEqual(r.margin, [0, 0, 0, 0], `row ${r.index}: margin`);
                assert.ok(r.box.h >= 18 && r.box.h <= 26, `row ${r.index}: ${r.box.h} px tall (one line)`);
                assert.ok(Math.abs(r.box.w - (m.list.box.w - m.list.border[1] - m.list.border[3])) <= 1, `row ${r.index} spans the list: ${r.box.w} of ${m.list.box.w}`);
                assert.ok(contrast(r.color, m.page) >= 4.5, `row ${r.index}: text ${fmt(r.color)} on ${fmt(m.page)}`);
            }
            for (let k = 1; k < m.rows.length; k++) {
                const gap = m.rows[k].box.y - (m.rows[k - 1].box.y + m.rows[k - 1].box.h);
                assert.ok(Math.abs(gap) < 0.5, `rows ${k - 1} and ${k} follow each other: gap ${gap}`);
            }
            const selected = m.rows.filter((r) => r.selected);
            assert.equal(selected.length, 1);
            assert.ok(selected[0].background[3] > 0, `the selected row is highlighted: ${fmt(selected[0].background)}`);
            for (const li of m.listItems) {
                assert.deepEqual([li.padding, li.margin], [[0, 0, 0, 0], [0, 0, 0, 0]], 'list items: no padding or margin');
                assert.ok(['none', 'normal'].includes(li.before), `no ::before content: ${li.before}`);
                assert.ok(['none', 'normal'].includes(li.marker) || li.listStyle.startsWith('none'), `no marker: ${li.marker} ${li.listStyle}`);
            }
            assert.deepEqual([m.list.padding, m.list.margin], [[0, 0, 0, 0], [0, 0, 0, 0]], 'the list is not indented');
            for (const s of m.rowSwatches) assert.deepEqual(s.background, s.inline, 'row swatches show the region colour');
        });

        test('palette swatches keep their colour, size and border, 2 px apart', async () => {
            assert.equal(m.palette.length, 149);
            for (const s of m.palette) {
                assert.deepEqual(s.background, s.inline, `${s.name}: computed background`);
                assert.equal(s.backgroundImage, 'none', `${s.name}: no background image`);
                assert.deepEqual([s.box.w, s.box.h], [16, 16], `${s.name}: 16x16`);
                assert.deepEqual(s.margin, [0, 0, 0, 0], `${s.name}: margin`);
                assert.ok(s.border.every((w) => w >= 1), `${s.name}: border ${fmt(s.border)}`);
            }
            const columns = Math.round(m.palette.filter((s) => s.box.y === m.palette[0].box.y).length);
            assert.ok(columns >= 10, `${columns} swatches a row`);
            assert.equal(m.palette[columns].box.y - m.palette[0].box.y, 18, 'rows of swatches are 16 + 2 px apart');
            const gold = m.palette.find((s) => s.name === 'gold').box;
            const px = await pixels(page, { x: Math.floor(gold.x + 6), y: Math.floor(gold.y + 6), width: 4, height: 4 });
            assert.ok(shareDiffering(px, [255, 215, 0], 3) === 0, `the gold swatch is painted gold: ${fmt(px.data.slice(0, 4))}`);
        });

        test('form fields are compact (the editor\'s font, small padding), bordered and readable', () => {
            assert.ok(m.fields.length >= 12, `${m.fields.length} visible fields`);
            for (const f of m.fields) {
                const what = `${f.name} field ${fmt({ padding: f.padding, margin: f.margin, border: f.border, borderColor: f.borderColor, fontSize: f.fontSize, background: f.background })}`;
                assert.ok(f.padding.every((p) => p >= 1 && p <= 6), `${what}: padding`);
                assert.deepEqual(f.margin, [0, 0, 0, 0], `${what}: margin`);
                assert.equal(f.fontSize, m.fontSize, `${what}: the editor's font size`);
                assert.ok(f.border.every((w) => w >= 1) && f.borderStyle === 'solid' && f.borderColor[3] > 0, `${what}: border`);
                const paint = paintColors(f, m.page);
                assert.ok(contrast(f.color, paint[0]) >= 4.5, `${what}: text ${fmt(f.color)} on ${fmt(paint[0])}`);
                if (f.tag === 'INPUT') assert.ok(f.box.h <= 26, `${what}: ${f.box.h} px tall`);
            }
        });

        test('screenshot (tests/artifacts/)', async () => {
            const file = await saveScreenshot(page, `canvas_editor_gradio${set.version.split('.')[0]}${variant.suffix}.png`);
            assert.ok(fs.statSync(file).size > 10000);
        });
    });
}));
