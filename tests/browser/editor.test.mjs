// Headless-Chromium tests of the canvas editor (javascript/omost_*.js, style.css).
// Run: npm ci --prefix tests/browser && node --test tests/browser/editor.test.mjs   (needs /usr/bin/chromium)
// A page on 127.0.0.1 (ephemeral port) loads the real javascript/ files beside a minimal
// gradioApp()/updateInput()/onUiLoaded() shim and the Textbox/HTML/slider elements of the accordion.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import vm from 'node:vm';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const JS_DIR = path.join(REPO, 'javascript');
const ARTIFACTS = path.join(REPO, 'tests', 'artifacts');
const CHROMIUM = process.env.OMOST_CHROMIUM || '/usr/bin/chromium';
const DRAGON = JSON.parse(fs.readFileSync(path.join(HERE, 'fixtures', 'dragon.json'), 'utf8'));
const COLORS = { // a few entries of shared/data/html_colors.json
    darkslategray: [47, 79, 79], midnightblue: [25, 25, 112], darkgoldenrod: [184, 134, 11],
    darkolivegreen: [85, 107, 47], firebrick: [178, 34, 34], gold: [255, 215, 0], white: [255, 255, 255]
};

const jsFiles = () => fs.readdirSync(JS_DIR).filter((f) => /^omost_[\w.-]*\.js$/.test(f)).sort();

function escapeHtml(s) {
    return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

// ---- the model, without a browser ------------------------------------------------------------------

function loadModel() {
    const sandbox = { window: {} };
    vm.createContext(sandbox);
    vm.runInContext(fs.readFileSync(path.join(JS_DIR, 'omost_canvas_model.js'), 'utf8'), sandbox);
    return sandbox.window.omostCanvasEditor.model;
}

describe('canvas model (node, no browser)', () => {
    const m = loadModel();

    test('colour table: 149 names with their RGB values', () => {
        assert.equal(m.COLOR_NAMES.length, 149);
        for (const [name, rgb] of Object.entries(COLORS)) assert.deepEqual([...m.COLORS[name]], rgb, name);
        assert.deepEqual([...m.colorRgb('DarkGoldenrod')], COLORS.darkgoldenrod);
        assert.equal(m.colorRgb('notacolour'), null);
        assert.equal(m.colorRgb([1, 2, 256]), null);
        assert.equal(m.colorNameOf([255, 215, 0]), 'gold');
    });

    test('geometry: the OMOST.md examples and clamping', () => {
        assert.deepEqual([...m.rectFromLocation('on the left', 'no offset', 'a large horizontal area')], [15, 75, 0, 60]);
        assert.deepEqual([...m.rectFromLocation('on the top-left', 'no offset', 'a small square area')], [0, 40, 0, 40]);
        // centre (75-10... ) right + slightly to the right = x 85, w 70 -> 50..120 clamped to 90
        assert.deepEqual([...m.rectFromLocation('on the right', 'slightly to the right', 'a large square area')], [10, 80, 50, 90]);
    });

    test('move keeps the size inside the grid; resize keeps at least one unit', () => {
        assert.deepEqual([...m.moveRect([15, 75, 0, 60], 10.4, -3.6, true)], [11, 71, 10, 70]);
        assert.deepEqual([...m.moveRect([15, 75, 0, 60], 10.4, -3.6, false)], [11.4, 71.4, 10.4, 70.4]);
        assert.deepEqual([...m.moveRect([15, 75, 0, 60], -5, 40, true)], [30, 90, 0, 60]);
        assert.deepEqual([...m.resizeRect([15, 75, 0, 60], { right: true }, 100, 0, true)], [15, 75, 0, 90]);
        assert.deepEqual([...m.resizeRect([15, 75, 0, 60], { left: true, top: true }, 80, 80, true)], [74, 75, 59, 60]);
        assert.deepEqual([...m.resizeRect([15, 75, 0, 60], { bottom: true }, 0, 2.345, false)], [15, 77.35, 0, 60]);
    });

    test('reorder changes only the moved distance, or renumbers when ties leave no room', () => {
        const doc = m.validateCanvas(DRAGON);
        const before = doc.regions.map((r) => r.distance);
        assert.deepEqual([...m.orderedIndices(doc)], [2, 1, 0, 3]);
        assert.equal(m.reorder(doc, 0, 'farther'), true);
        assert.deepEqual([...m.orderedIndices(doc)], [2, 0, 1, 3]);
        assert.ok(doc.regions[0].distance > 7 && doc.regions[0].distance < 10);
        doc.regions.forEach((r, i) => { if (i !== 0) assert.equal(r.distance, before[i]); });
        assert.equal(m.reorder(doc, 2, 'farther'), false); // already farthest
        assert.equal(m.reorder(doc, 3, 'farthest'), true);
        assert.deepEqual([...m.orderedIndices(doc)], [3, 2, 0, 1]);
        // all four tied: only renumbering can express the new order
        const tied = m.validateCanvas(DRAGON);
        tied.regions.forEach((r) => { r.distance = 2; });
        assert.deepEqual([...m.orderedIndices(tied)], [0, 1, 2, 3]);
        m.reorder(tied, 3, 'farther');
        assert.deepEqual([...m.orderedIndices(tied)], [0, 1, 3, 2]);
        assert.ok(tied.regions.every((r) => r.distance > 0));
    });

    test('validation names the field and what is allowed', () => {
        const bad = (mutate) => {
            const doc = JSON.parse(JSON.stringify(DRAGON));
            mutate(doc);
            return m.parseCanvasText(JSON.stringify(doc));
        };
        let r = bad((d) => { d.regions[1].rect = [50, 40, 10, 80]; d.regions[1].location = null; });
        assert.equal(r.ok, false);
        assert.match(r.message, /regions\[1\]\.rect: needs top < bottom/);
        r = bad((d) => { d.regions[0].rect = [15, 75, 0, 61]; });
        assert.match(r.message, /regions\[0\]\.rect: \[15,75,0,61\] differs from \[15,75,0,60\] implied by location/);
        r = bad((d) => { d.regions[2].distance = 0; });
        assert.match(r.message, /regions\[2\]\.distance: must be a number > 0/);
        r = bad((d) => { d.regions[0].weight = 3; });
        assert.match(r.message, /regions\[0\]\.weight: must be a number in \[0, 2\]/);
        r = bad((d) => { d.regions[3].negative = ['blurry']; });
        assert.match(r.message, /regions\[3\]\.negative: must be a string \(a negative prompt\)/);
        r = bad((d) => { d.global.negative = 5; });
        assert.match(r.message, /global\.negative: must be a string/);
        r = bad((d) => { d.global.negative = ''; d.regions[0].negative = null; d.regions[1].negative = 'blurry'; });
        assert.equal(r.ok, true);
        assert.deepEqual([r.doc.global.negative, r.doc.regions[0].negative, r.doc.regions[1].negative],
            [undefined, undefined, 'blurry'], 'an empty negative is no key at all');
        r = bad((d) => { d.regions[0].area = 'a huge area'; });
        assert.match(r.message, /regions\[0\]\.area: must be null or one of "a small square area"/);
        r = m.parseCanvasText('{"format": "omost-canvas", "global": {"color": "red"}, "regions": [}');
        assert.equal(r.message, "Bad JSON in the canvas box (line 1, column 68): expected a value, found '}'");
        r = m.parseCanvasText('{\n  "global": {\n    "tags": \'x\'\n  }\n}');
        assert.equal(r.message, "Bad JSON in the canvas box (line 3, column 13): expected a value, found ''' (JSON strings use double quotes)");
        r = m.parseCanvasText('{"regions": [1, 2');
        assert.equal(r.message, "Bad JSON in the canvas box (line 1, column 18): expected ',' or ']' after a list item, found the end of the text");
        r = m.parseCanvasText(JSON.stringify({ ...DRAGON, global: { ...DRAGON.global, color: 'DarkSlateGray' } }));
        assert.equal(r.ok, true);
        assert.equal(r.doc.global.color, 'darkslategray');
    });
});

// ---- the editor in headless Chromium ---------------------------------------------------------------

let server;
let origin;
let browser;

function startServer() {
    const page = fs.readFileSync(path.join(HERE, 'page.html'), 'utf8');
    return new Promise((resolve) => {
        server = http.createServer((req, res) => {
            const url = new URL(req.url, 'http://127.0.0.1');
            const send = (type, body) => { res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }); res.end(body); };
            if (url.pathname === '/page.html') {
                const fixture = url.searchParams.get('canvas');
                const text = fixture === null ? JSON.stringify(DRAGON, null, 2) : fixture;
                const scripts = jsFiles().map((f) => `<script src="/javascript/${f}"></script>`).join('\n');
                return send('text/html; charset=utf-8', page.replace('<!--SCRIPTS-->', scripts).replace('<!--CANVAS-->', escapeHtml(text)));
            }
            const js = /^\/javascript\/(omost_[\w.-]*\.js)$/.exec(url.pathname);
            if (js && jsFiles().includes(js[1])) return send('text/javascript', fs.readFileSync(path.join(JS_DIR, js[1])));
            if (url.pathname === '/style.css') return send('text/css', fs.readFileSync(path.join(REPO, 'style.css')));
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

let sharedPage;

/* The test page freshly loaded (one tab reused: a new renderer per test costs more than the test) with the
 * editor mounted; records every request and uncaught error. */
async function openEditor(canvasText) {
    if (!sharedPage) {
        const context = await browser.newContext({ viewport: { width: 1100, height: 1000 }, deviceScaleFactor: 1 });
        sharedPage = await context.newPage();
        sharedPage.on('request', (r) => sharedPage.requests.push(r.url()));
        sharedPage.on('pageerror', (e) => sharedPage.errors.push(String(e)));
    }
    const page = sharedPage;
    await page.goto('about:blank');
    page.requests = [];
    page.errors = [];
    const query = canvasText === undefined ? '' : `?canvas=${encodeURIComponent(canvasText)}`;
    await page.goto(`${origin}/page.html${query}`);
    await page.waitForFunction(() => {
        const ed = window.omostCanvasEditor && window.omostCanvasEditor.editors.txt2img;
        return ed && ed.canvas.isConnected && ed.cssSize[0] > 0 && window.__uiLoadedDone;
    });
    return page;
}

async function closeEditor(page) {
    assert.deepEqual(page.errors, [], 'no uncaught errors in the page');
    const outside = page.requests.filter((u) => !u.startsWith(origin + '/') && !/^(data|blob):/.test(u));
    assert.deepEqual(outside, [], 'no request leaves the test server');
}

const textOf = (page, tab = 'txt2img') => page.$eval(`#omost_${tab}_canvas_json textarea`, (t) => t.value);
const jsonOf = async (page, tab) => JSON.parse(await textOf(page, tab));
const updateCalls = (page) => page.evaluate(() => window.__updateInputCalls.length);
const rects = (doc) => doc.regions.map((r) => r.rect);

async function canvasBox(page, tab = 'txt2img') {
    return page.$eval(`#omost_${tab}_canvas_editor canvas`, (c) => {
        const b = c.getBoundingClientRect();
        return { x: b.left, y: b.top, w: b.width, h: b.height };
    });
}

/* Page coordinates of grid point (column gx, row gy). */
function at(box, gx, gy) {
    return [box.x + gx / 90 * box.w, box.y + gy / 90 * box.h];
}

async function drag(page, from, to, { steps = 5, beforeUp } = {}) {
    await page.mouse.move(from[0], from[1]);
    await page.mouse.down();
    await page.mouse.move(to[0], to[1], { steps });
    if (beforeUp) await beforeUp();
    await page.mouse.up();
}

/* RGB of the editor canvas at grid point (gx, gy). */
function pixel(page, gx, gy, tab = 'txt2img') {
    return page.$eval(`#omost_${tab}_canvas_editor canvas`, (c, p) => {
        const x = Math.floor(p[0] / 90 * c.width), y = Math.floor(p[1] / 90 * c.height);
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3));
    }, [gx, gy]);
}

const over = (top, below) => top.map((v, k) => 0.7 * v + 0.3 * below[k]);

function assertColor(actual, expected, tolerance, what) {
    const ok = actual.every((v, k) => Math.abs(v - expected[k]) <= tolerance);
    assert.ok(ok, `${what}: got [${actual}], expected [${expected.map((v) => v.toFixed(1))}] ±${tolerance}`);
}

async function listTitles(page, tab = 'txt2img') {
    return page.$$eval(`#omost_${tab}_canvas_editor .omost-ce-row-title`, (els) => els.map((e) => e.textContent));
}

async function waitForText(page, predicate, tab = 'txt2img') {
    await page.waitForFunction(([id, src]) => {
        const t = document.querySelector(`#${id} textarea`).value;
        try { return new Function('doc', `return (${src})(doc);`)(JSON.parse(t)); } catch (e) { return false; }
    }, [`omost_${tab}_canvas_json`, predicate.toString()]);
}

const click = (page, action) => page.click(`#omost_txt2img_canvas_editor [data-action=${action}]`);

describe('canvas editor (headless Chromium)', () => {
    test('mounts on onUiLoaded, lists regions far to near numbered in program order, draws the global colour, then boxes far to near (0.7 over 0.3)', async () => {
        const page = await openEditor();
        assert.deepEqual(await listTitles(page), [
            'Global: A fierce battle between warriors and a dragon.',
            '3. A stormy sky with flashes of lightning.', '2. A mighty dragon.',
            '1. A group of fierce warriors.', '4. A debris-covered battlefield.'
        ]);
        const box = await canvasBox(page);
        assert.ok(Math.abs(box.w - box.h) <= 1, `512x512 is drawn square: ${box.w}x${box.h}`);
        // sky only, over the global colour
        assertColor(await pixel(page, 85, 5), over(COLORS.midnightblue, COLORS.darkslategray), 1, 'sky');
        // warriors (distance 5, program index 0) then battlefield (distance 5, index 3) over the global colour
        assertColor(await pixel(page, 5, 62), over(COLORS.darkolivegreen, over(COLORS.darkgoldenrod, COLORS.darkslategray)), 2, 'warriors+battlefield');
        // sky, dragon, warriors in that order
        assertColor(await pixel(page, 35, 25),
            over(COLORS.darkgoldenrod, over(COLORS.firebrick, over(COLORS.midnightblue, COLORS.darkslategray))), 2, 'sky+dragon+warriors');
        assert.equal(await textOf(page), JSON.stringify(DRAGON, null, 2), 'mounting does not rewrite the box');
        const added = await page.evaluate(() => Object.getOwnPropertyNames(window).filter((k) => !window.__globalsBefore.includes(k)));
        assert.deepEqual(added.filter((k) => !k.startsWith('__')), ['omostCanvasEditor'], 'one global object');
        assert.equal(await updateCalls(page), 0);
        await closeEditor(page);
    });

    test('dragging a box moves it by whole grid units, frees it and writes the JSON once', async () => {
        const page = await openEditor();
        const box = await canvasBox(page);
        let calls = 0;
        // the warriors box [15, 75, 0, 60] is the nearest under (30, 30); drag by (+10.4, +4.7) units
        await drag(page, at(box, 30, 30), at(box, 40.4, 34.7), {
            beforeUp: async () => { calls = await updateCalls(page); }
        });
        assert.equal(calls, 0, 'nothing is written while dragging');
        const doc = await jsonOf(page);
        assert.deepEqual(doc.regions[0].rect, [20, 80, 10, 70]);
        assert.deepEqual([doc.regions[0].location, doc.regions[0].offset, doc.regions[0].area], [null, null, null]);
        assert.deepEqual(rects(doc).slice(1), rects(DRAGON).slice(1), 'other boxes untouched');
        assert.equal(doc.regions[1].location, 'in the center', 'other boxes keep their phrases');
        assert.deepEqual(await page.evaluate(() => window.__updateInputCalls), ['omost_txt2img_canvas_json']);
        // the drawing follows: (5, 20) left the warriors box, now sky over global only
        assertColor(await pixel(page, 5, 18), over(COLORS.midnightblue, COLORS.darkslategray), 1, 'vacated area');
        // a drag past the border stops at the border
        await drag(page, at(box, 40, 40), at(box, 80, 70));
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [30, 90, 30, 90]);
        await closeEditor(page);
    });

    test('resizing from an edge and from a corner moves only those edges', async () => {
        const page = await openEditor();
        const box = await canvasBox(page);
        await page.mouse.click(...at(box, 30, 30)); // select the warriors box [15, 75, 0, 60]
        await drag(page, at(box, 60, 45), at(box, 67.3, 47)); // right edge, inside the dragon box
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [15, 75, 0, 67]);
        await drag(page, at(box, 0.4, 15.2), at(box, 3.4, 11.2)); // top-left corner
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [11, 75, 3, 67]);
        await drag(page, at(box, 35, 75), at(box, 35, 120)); // bottom edge past the border
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [11, 90, 3, 67]);
        await drag(page, at(box, 67, 50), at(box, 1, 50)); // right edge past the left edge: one unit stays
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [11, 90, 3, 4]);
        assert.equal((await jsonOf(page)).regions[0].location, null);
        await closeEditor(page);
    });

    test('free placement: snapping off, or Alt held while dragging', async () => {
        const page = await openEditor();
        const box = await canvasBox(page);
        // whole-pixel pointer positions; free placement keeps 0.01 grid units
        const start = at(box, 30, 30).map(Math.round);
        const units = (px, size) => Math.round(px / size * 90 * 100) / 100;
        await page.click('#omost_txt2img_canvas_editor input[data-option=snap]');
        await drag(page, start, [start[0] + 13, start[1] + 8]);
        const [dx, dy] = [units(13, box.w), units(8, box.h)];
        assert.ok(!Number.isInteger(dx) && !Number.isInteger(dy), `${dx}, ${dy} are fractions`);
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [15 + dy, 75 + dy, dx, 60 + dx]);
        await page.click('#omost_txt2img_canvas_editor input[data-option=snap]');
        await drag(page, start, [start[0] + 7, start[1]]); // snapped again: left goes to a whole unit
        const left = Math.round(dx + 7 / box.w * 90);
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [15 + dy, 75 + dy, left, left + 60], 'rows untouched by a sideways drag');
        await page.keyboard.down('Alt');
        await drag(page, start, [start[0] + 7, start[1]]);
        await page.keyboard.up('Alt');
        const free = Math.round((left + units(7, box.w)) * 100) / 100;
        assert.ok(!Number.isInteger(free));
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [15 + dy, 75 + dy, free, free + 60]);
        await closeEditor(page);
    });

    test('keyboard: arrows nudge by 1, Shift+arrows by 5, stopping at the border', async () => {
        const page = await openEditor();
        const box = await canvasBox(page);
        await page.mouse.click(...at(box, 30, 30)); // selects warriors and focuses the canvas
        await page.keyboard.press('ArrowRight');
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [15, 75, 1, 61]);
        await page.keyboard.press('Shift+ArrowDown');
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [20, 80, 1, 61]);
        await page.keyboard.press('ArrowUp');
        await page.keyboard.press('Shift+ArrowLeft');
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [19, 79, 0, 60]);
        const calls = await updateCalls(page);
        await page.keyboard.press('ArrowLeft'); // at the border: no change, nothing written
        assert.equal(await updateCalls(page), calls);
        await page.keyboard.press('Control+z');
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [19, 79, 1, 61]);
        await closeEditor(page);
    });

    test('add, duplicate, delete, undo and redo (buttons and Ctrl+Z / Ctrl+Y)', async () => {
        const page = await openEditor();
        await click(page, 'add');
        let doc = await jsonOf(page);
        assert.equal(doc.regions.length, 5);
        const added = doc.regions[4];
        assert.deepEqual(added.rect, [30, 60, 30, 60]);
        assert.ok(added.distance > 0 && added.distance < 5, `new box is nearest: ${added.distance}`);
        assert.equal(added.location, null);
        assert.ok((await listTitles(page))[5].endsWith('New region'));

        await page.click('#omost_txt2img_canvas_editor .omost-ce-row[data-index="1"]'); // the dragon
        await click(page, 'duplicate');
        doc = await jsonOf(page);
        assert.equal(doc.regions.length, 6);
        assert.equal(doc.regions[2].description, 'A mighty dragon.');
        assert.deepEqual(doc.regions[2].rect, [15, 85, 15, 85]);
        assert.equal(doc.regions[2].location, null);
        assert.ok(doc.regions[2].distance < 7 && doc.regions[2].distance > 5, 'the copy sits just in front of the original');

        await click(page, 'delete'); // deletes the selected copy
        doc = await jsonOf(page);
        assert.equal(doc.regions.length, 5);
        assert.deepEqual(doc.regions.map((r) => r.description),
            ['A group of fierce warriors.', 'A mighty dragon.', 'A stormy sky with flashes of lightning.', 'A debris-covered battlefield.', 'New region']);

        await click(page, 'undo');
        assert.equal((await jsonOf(page)).regions.length, 6);
        await page.focus('#omost_txt2img_canvas_editor canvas');
        await page.keyboard.press('Control+z');
        assert.equal((await jsonOf(page)).regions.length, 5);
        await page.keyboard.press('Control+z');
        assert.deepEqual(await jsonOf(page), DRAGON, 'three undos give back the starting canvas');
        assert.equal(await page.isDisabled('#omost_txt2img_canvas_editor [data-action=undo]'), true);
        await page.keyboard.press('Control+y');
        assert.equal((await jsonOf(page)).regions.length, 5);
        await click(page, 'redo');
        await page.focus('#omost_txt2img_canvas_editor canvas');
        await page.keyboard.press('Control+Shift+z');
        assert.equal((await jsonOf(page)).regions.length, 5, 'redo x3 ends after the delete');
        assert.equal(await page.isDisabled('#omost_txt2img_canvas_editor [data-action=redo]'), true);
        // Delete key removes the selected box
        const box = await canvasBox(page);
        await page.mouse.click(...at(box, 85, 5)); // the sky
        await page.keyboard.press('Delete');
        assert.deepEqual((await jsonOf(page)).regions.map((r) => r.description).includes('A stormy sky with flashes of lightning.'), false);
        await closeEditor(page);
    });

    test('depth order: Farther / Nearer change distances so the far-to-near order changes', async () => {
        const page = await openEditor();
        await page.click('#omost_txt2img_canvas_editor .omost-ce-row[data-index="0"]'); // warriors, 3rd of 4
        await click(page, 'farther');
        let doc = await jsonOf(page);
        assert.ok(doc.regions[0].distance > 7 && doc.regions[0].distance < 10, String(doc.regions[0].distance));
        assert.deepEqual((await listTitles(page)).slice(1, 3), ['3. A stormy sky with flashes of lightning.', '1. A group of fierce warriors.']);
        await click(page, 'farther');
        doc = await jsonOf(page);
        assert.ok(doc.regions[0].distance > 10);
        assert.equal((await listTitles(page))[1], '1. A group of fierce warriors.');
        for (let k = 0; k < 3; k++) await click(page, 'nearer');
        doc = await jsonOf(page);
        assert.equal((await listTitles(page))[4], '1. A group of fierce warriors.');
        assert.ok(doc.regions[0].distance > 0 && doc.regions[0].distance < 5);
        assert.deepEqual(doc.regions.slice(1).map((r) => r.distance), [7, 10, 5], 'only the moved box changed distance');
        // the drawing follows: warriors now in front of the battlefield at (5, 62)
        assertColor(await pixel(page, 5, 62), over(COLORS.darkgoldenrod, over(COLORS.darkolivegreen, COLORS.darkslategray)), 2, 'warriors in front');
        await closeEditor(page);
    });

    test('text fields, numbers and the colour palette edit the selected region and the global one', async () => {
        const page = await openEditor();
        const ed = '#omost_txt2img_canvas_editor';
        await page.click(`${ed} .omost-ce-row[data-index="1"]`); // the dragon
        assert.equal(await page.inputValue(`${ed} input[data-field=description]`), 'A mighty dragon.');
        await page.click(`${ed} input[data-field=description]`);
        await page.keyboard.press('End');
        await page.keyboard.type(' Red');
        await waitForText(page, (doc) => doc.regions[1].description === 'A mighty dragon. Red');
        await page.fill(`${ed} textarea[data-field=detailed_descriptions]`, 'First line.\n\n  Second line.  \n');
        await page.fill(`${ed} input[data-field=tags]`, 'dragon, red');
        await page.fill(`${ed} input[data-field=atmosphere]`, 'Hot.');
        await page.fill(`${ed} input[data-field=style]`, 'Oil painting.');
        await page.fill(`${ed} input[data-field=quality_meta]`, 'Sharp.');
        await page.fill(`${ed} input[data-field=weight]`, '1.5');
        await page.press(`${ed} input[data-field=weight]`, 'Enter');
        await page.fill(`${ed} input[data-field=distance]`, '-2');
        await page.press(`${ed} input[data-field=distance]`, 'Enter');
        assert.match(await page.textContent(`${ed} .omost-ce-note`), /distance: -2 is not allowed \(needs a number > 0\)/);
        await page.click(`${ed} .omost-ce-palette-item[data-color=gold]`);
        let doc = await jsonOf(page);
        const dragon = doc.regions[1];
        assert.deepEqual(dragon.detailed_descriptions, ['First line.', 'Second line.']);
        assert.deepEqual([dragon.tags, dragon.atmosphere, dragon.style, dragon.quality_meta, dragon.weight, dragon.distance, dragon.color],
            ['dragon, red', 'Hot.', 'Oil painting.', 'Sharp.', 1.5, 7, 'gold']);
        assert.equal(dragon.location, 'in the center', 'text edits keep the phrases');
        // the palette filter picks the first match with Enter; the global colour is behind everything
        await page.click(`${ed} .omost-ce-row[data-index="-1"]`);
        assert.equal(await page.isHidden(`${ed} input[data-field=atmosphere]`), true, 'global has no atmosphere');
        await page.fill(`${ed} .omost-ce-color-filter`, 'whi');
        await page.press(`${ed} .omost-ce-color-filter`, 'Enter');
        doc = await jsonOf(page);
        assert.equal(doc.global.color, 'white');
        assertColor(await pixel(page, 85, 5), over(COLORS.midnightblue, COLORS.white), 1, 'sky over the new global colour');
        // typing is one undo step per field
        await click(page, 'undo');
        await click(page, 'undo');
        doc = await jsonOf(page);
        assert.equal(doc.global.color, 'darkslategray');
        assert.equal(doc.regions[1].color, 'firebrick');
        for (let k = 0; k < 6; k++) await click(page, 'undo');
        doc = await jsonOf(page);
        assert.equal(doc.regions[1].description, 'A mighty dragon. Red');
        await click(page, 'undo');
        assert.equal((await jsonOf(page)).regions[1].description, 'A mighty dragon.');
        // rect numbers: checked, then applied as a free rectangle
        await page.click(`${ed} .omost-ce-row[data-index="1"]`);
        await page.fill(`${ed} input[data-field=top]`, '85');
        await page.press(`${ed} input[data-field=top]`, 'Enter');
        assert.match(await page.textContent(`${ed} .omost-ce-note`), /top: 85 is not allowed \(needs 0 to 90 with top < bottom and left < right\)/);
        assert.deepEqual((await jsonOf(page)).regions[1].rect, [10, 80, 10, 80]);
        await page.fill(`${ed} input[data-field=left]`, '3.5');
        await page.press(`${ed} input[data-field=left]`, 'Enter');
        doc = await jsonOf(page);
        assert.deepEqual([doc.regions[1].rect, doc.regions[1].location], [[10, 80, 3.5, 80], null]);
        assert.equal(await page.isHidden(`${ed} .omost-ce-note`), true, 'the message goes once the value is good');
        await closeEditor(page);
    });

    test('negative prompts: edited for a region and the global one, round-tripped through the JSON box', async () => {
        const page = await openEditor();
        const ed = '#omost_txt2img_canvas_editor';
        await page.click(`${ed} .omost-ce-row[data-index="1"]`); // the dragon
        assert.equal(await page.inputValue(`${ed} input[data-field=negative]`), '');
        await page.fill(`${ed} input[data-field=negative]`, 'blurry, (extra wings:1.2)');
        await waitForText(page, (doc) => doc.regions[1].negative === 'blurry, (extra wings:1.2)');
        await page.click(`${ed} .omost-ce-row[data-index="-1"]`);
        assert.equal(await page.isHidden(`${ed} input[data-field=negative]`), false, 'the global region has one too');
        assert.equal(await page.inputValue(`${ed} input[data-field=negative]`), '');
        await page.fill(`${ed} input[data-field=negative]`, 'lowres');
        await waitForText(page, (doc) => doc.global.negative === 'lowres');
        let doc = await jsonOf(page);
        assert.deepEqual(doc.regions.map((r) => r.negative), [undefined, 'blurry, (extra wings:1.2)', undefined, undefined]);
        // cleared: the key goes, so the JSON is the canvas without negatives again
        await page.fill(`${ed} input[data-field=negative]`, '');
        await page.click(`${ed} .omost-ce-row[data-index="1"]`);
        await page.fill(`${ed} input[data-field=negative]`, '');
        await waitForText(page, (doc) => !('negative' in doc.global) && doc.regions.every((r) => !('negative' in r)));
        assert.deepEqual(await jsonOf(page), DRAGON);
        // text with negatives set in the box is shown in the fields
        const withNegatives = JSON.parse(JSON.stringify(DRAGON));
        withNegatives.regions[2].negative = 'smoke';
        withNegatives.global.negative = 'watermark';
        await page.$eval('#omost_txt2img_canvas_json textarea', (t, v) => { t.value = v; }, JSON.stringify(withNegatives));
        await page.click(`${ed} .omost-ce-row[data-index="2"]`);
        await page.waitForFunction((sel) => document.querySelector(sel).value === 'smoke', `${ed} input[data-field=negative]`);
        await page.click(`${ed} .omost-ce-row[data-index="-1"]`);
        assert.equal(await page.inputValue(`${ed} input[data-field=negative]`), 'watermark');
        await closeEditor(page);
    });

    test('text set programmatically (no event) is read back and redrawn; nothing is echoed', async () => {
        const page = await openEditor();
        const changed = JSON.parse(JSON.stringify(DRAGON));
        changed.regions[2].color = 'gold';
        changed.regions.splice(1, 1);
        await page.$eval('#omost_txt2img_canvas_json textarea', (t, v) => { t.value = v; }, JSON.stringify(changed));
        await page.waitForFunction(() => document.querySelectorAll('#omost_txt2img_canvas_editor .omost-ce-row').length === 4);
        assertColor(await pixel(page, 85, 5), over(COLORS.gold, COLORS.darkslategray), 1, 'sky recoloured');
        assert.equal(await updateCalls(page), 0, 'reading does not write');
        assert.equal(await textOf(page), JSON.stringify(changed), 'the text is left as written');
        // an external change is undoable like an edit
        await click(page, 'undo');
        assert.deepEqual(await jsonOf(page), DRAGON);
        // the same canvas written back in another spelling (as Python may echo it) is not a new undo step
        await click(page, 'add');
        const echoed = await jsonOf(page);
        delete echoed.regions[4].weight; // the default weight left out
        const respelled = JSON.stringify({ regions: echoed.regions, global: echoed.global, version: 1, format: 'omost-canvas' })
            .replace(/"distance":(\d+)([,}])/g, '"distance":$1.0$2');
        assert.ok(respelled.includes('"distance":10.0'));
        await page.$eval('#omost_txt2img_canvas_json textarea', (t, v) => { t.value = v; }, respelled);
        await page.waitForTimeout(400); // more than one poll
        await click(page, 'undo');
        assert.deepEqual(await jsonOf(page), DRAGON, 'one undo takes back the add');
        await closeEditor(page);
    });

    test('bad JSON: a message, the last good canvas kept, the text untouched, editing locked', async () => {
        const page = await openEditor();
        const ed = '#omost_txt2img_canvas_editor';
        const before = await pixel(page, 85, 5);
        const bad = JSON.stringify(DRAGON, null, 2).replace('"distance": 7,', '"distance": 7');
        const lines = bad.split('\n');
        const next = lines.findIndex((l) => l.includes('"distance": 7')) + 1; // the error is on the following line
        const where = `line ${next + 1}, column ${lines[next].search(/\S/) + 1}`;
        await page.$eval('#omost_txt2img_canvas_json textarea', (t, v) => { t.value = v; t.dispatchEvent(new Event('input', { bubbles: true })); }, bad);
        await page.waitForSelector(`${ed} .omost-ce-error:not([hidden])`);
        const message = await page.textContent(`${ed} .omost-ce-error-text`);
        assert.ok(message.startsWith(`Bad JSON in the canvas box (${where}): expected ',' or '}' after a property value, found '"'`), message);
        assert.match(message, /shows the last good canvas/);
        assert.deepEqual(await pixel(page, 85, 5), before);
        assert.equal((await listTitles(page)).length, 5);
        assert.equal(await page.isDisabled(`${ed} [data-action=add]`), true);
        const box = await canvasBox(page);
        await drag(page, at(box, 30, 30), at(box, 50, 50));
        await page.waitForTimeout(400); // more than one poll
        assert.equal(await textOf(page), bad, 'the user\'s text is never overwritten');
        assert.equal(await updateCalls(page), 0);
        // a well-formed but invalid canvas names the field
        const invalid = JSON.parse(JSON.stringify(DRAGON));
        invalid.regions[1].rect = [80, 10, 10, 80];
        await page.$eval('#omost_txt2img_canvas_json textarea', (t, v) => { t.value = v; }, JSON.stringify(invalid));
        await page.waitForFunction(() => /regions\[1\]\.rect: needs top < bottom/.test(document.querySelector('#omost_txt2img_canvas_editor .omost-ce-error-text').textContent));
        await shoot(page, 'omost_canvas_editor_bad_json.png');
        // restoring writes the last good canvas back
        await click(page, 'restore');
        assert.equal(await page.isHidden(`${ed} .omost-ce-error`), true);
        assert.deepEqual(await jsonOf(page), JSON.parse(JSON.stringify(DRAGON)));
        assert.deepEqual(await page.evaluate(() => window.__updateInputCalls), ['omost_txt2img_canvas_json']);
        await closeEditor(page);
    });

    test('bad JSON from the start: a message and no canvas until good text arrives', async () => {
        const page = await openEditor('{"format": "omost-canvas",\n  "global": {oops}}');
        const ed = '#omost_txt2img_canvas_editor';
        await page.waitForSelector(`${ed} .omost-ce-error:not([hidden])`);
        assert.equal(await page.textContent(`${ed} .omost-ce-error-text`),
            "Bad JSON in the canvas box (line 2, column 14): expected a \"quoted\" property name, found 'o'");
        assert.equal(await page.isHidden(`${ed} [data-action=restore]`), true, 'nothing to restore yet');
        assert.equal(await page.isDisabled(`${ed} [data-action=add]`), true);
        await page.$eval('#omost_txt2img_canvas_json textarea', (t, v) => { t.value = v; }, JSON.stringify(DRAGON));
        await page.waitForSelector(`${ed} .omost-ce-error`, { state: 'hidden' });
        assert.equal((await listTitles(page)).length, 5);
        assertColor(await pixel(page, 85, 5), over(COLORS.midnightblue, COLORS.darkslategray), 1, 'drawn');
        assert.equal(await page.isDisabled(`${ed} [data-action=undo]`), true, 'the first good canvas is no undo step');
        await closeEditor(page);
    });

    test('the canvas follows the aspect ratio of the width/height sliders', async () => {
        const page = await openEditor();
        // set programmatically (Gradio does this without events): picked up by the poll
        await page.$eval('#txt2img_width input[type=number]', (i) => { i.value = '1024'; });
        await page.waitForFunction(() => {
            const c = document.querySelector('#omost_txt2img_canvas_editor canvas');
            return Math.abs(c.getBoundingClientRect().width / c.getBoundingClientRect().height - 2) < 0.01;
        });
        // with an input event on both inputs
        await page.$eval('#txt2img_height', (box) => {
            box.querySelectorAll('input').forEach((i) => { i.value = '1344'; i.dispatchEvent(new Event('input', { bubbles: true })); });
        });
        await page.$eval('#txt2img_width', (box) => {
            box.querySelectorAll('input').forEach((i) => { i.value = '768'; i.dispatchEvent(new Event('input', { bubbles: true })); });
        });
        const box = await canvasBox(page);
        assert.ok(Math.abs(box.w / box.h - 768 / 1344) < 0.01, `${box.w}x${box.h}`);
        assert.ok(box.h <= 480.5, 'tall images are limited in height');
        // drawing still maps grid units to the new shape: drag by 10 units right and 9 down
        await drag(page, at(box, 30, 30), at(box, 40, 39));
        assert.deepEqual((await jsonOf(page)).regions[0].rect, [24, 84, 10, 70]);
        assert.equal(await updateCalls(page), 1);
        await closeEditor(page);
    });

    test('an img2img accordion that appears later gets its own editor', async () => {
        const page = await openEditor();
        await page.$eval('#later', (div, text) => {
            div.innerHTML = '<div id="img2img_width"><input type="number" value="768"><input type="range" value="768"></div>' +
                '<div id="img2img_height"><input type="number" value="512"><input type="range" value="512"></div>' +
                '<div id="omost_img2img_canvas_json"><label><textarea></textarea></label></div>' +
                '<div id="omost_img2img_canvas_editor"><div class="prose"><div class="omost-canvas-editor-mount"></div></div></div>';
            div.querySelector('textarea').value = text;
        }, JSON.stringify(DRAGON));
        await page.waitForFunction(() => {
            const c = document.querySelector('#omost_img2img_canvas_editor canvas');
            return c && c.getBoundingClientRect().height > 0;
        });
        await page.$eval('#omost_img2img_canvas_editor canvas', (c) => c.scrollIntoView());
        const box = await canvasBox(page, 'img2img');
        assert.ok(Math.abs(box.w / box.h - 1.5) < 0.01);
        await drag(page, at(box, 30, 30), at(box, 35, 30));
        assert.deepEqual((await jsonOf(page, 'img2img')).regions[0].rect, [15, 75, 5, 65]);
        assert.deepEqual((await jsonOf(page, 'txt2img')).regions[0].rect, [15, 75, 0, 60], 'txt2img untouched');
        // Gradio re-rendering the HTML block: the editor mounts again, with its state
        await page.$eval('#omost_img2img_canvas_editor', (d) => { d.innerHTML = '<div class="prose"><div class="omost-canvas-editor-mount"></div></div>'; });
        await page.waitForSelector('#omost_img2img_canvas_editor canvas');
        await page.click('#omost_img2img_canvas_editor [data-action=undo]');
        assert.deepEqual((await jsonOf(page, 'img2img')).regions[0].rect, [15, 75, 0, 60]);
        await closeEditor(page);
    });

    test('the ComfyUI list form is read; an edit writes the omost-canvas form', async () => {
        const list = [
            { rect: [0, 90, 0, 90], prefixes: ['A cat on a sofa.'], suffixes: ['Cosy room.', 'cat, sofa'], color: [255, 255, 255] },
            { rect: [10, 60, 5, 85], prefixes: ['A cat on a sofa.', 'A red sofa.'], suffixes: ['Velvet.'], color: [178, 34, 34] },
            { rect: [20, 50, 30, 60], prefixes: ['A cat on a sofa.', 'A grey cat.'], suffixes: [], color: [120, 120, 121] }
        ];
        const page = await openEditor(JSON.stringify(list));
        assert.match(await page.textContent('#omost_txt2img_canvas_editor .omost-ce-note'), /ComfyUI list form/);
        assert.deepEqual(await listTitles(page), ['Global: A cat on a sofa.', '1. A red sofa.', '2. A grey cat.']);
        assertColor(await pixel(page, 45, 35), over([120, 120, 121], over(COLORS.firebrick, COLORS.white)), 2, 'cat over sofa');
        assert.equal(await textOf(page), JSON.stringify(list), 'reading does not convert the text');
        await page.click('#omost_txt2img_canvas_editor .omost-ce-row[data-index="0"]'); // the sofa
        await page.focus('#omost_txt2img_canvas_editor canvas');
        await page.keyboard.press('ArrowDown');
        const doc = await jsonOf(page);
        assert.equal(doc.format, 'omost-canvas');
        assert.equal(doc.global.color, 'white');
        assert.deepEqual(doc.regions.map((r) => [r.description, r.rect, r.color]),
            [['A red sofa.', [11, 61, 5, 85], 'firebrick'], ['A grey cat.', [20, 50, 30, 60], [120, 120, 121]]]);
        assert.ok(doc.regions[0].distance > doc.regions[1].distance);
        await closeEditor(page);
    });

    test('background image: a local file (never uploaded) or the last result in the gallery', async () => {
        const page = await openEditor();
        const ed = '#omost_txt2img_canvas_editor';
        await click(page, 'bg-result');
        assert.match(await page.textContent(`${ed} .omost-ce-note`), /No result image in the txt2img gallery yet/);
        const png = await page.evaluate(() => {
            const c = document.createElement('canvas');
            c.width = 64; c.height = 64;
            const x = c.getContext('2d');
            x.fillStyle = 'rgb(250, 250, 250)';
            x.fillRect(0, 0, 64, 64);
            return c.toDataURL('image/png');
        });
        const requests = page.requests.length;
        await page.setInputFiles(`${ed} input[type=file]`, { name: 'bg.png', mimeType: 'image/png', buffer: Buffer.from(png.split(',')[1], 'base64') });
        await page.waitForFunction(() => window.omostCanvasEditor.editors.txt2img.background !== null);
        const expected = over(COLORS.midnightblue, COLORS.darkslategray).map((v) => 0.5 * v + 0.5 * 250);
        assertColor(await pixel(page, 85, 5), expected, 2, 'boxes at half opacity over the image');
        assert.equal(page.requests.length, requests, 'the file is read in the page, not sent anywhere');
        await click(page, 'bg-clear');
        assertColor(await pixel(page, 85, 5), over(COLORS.midnightblue, COLORS.darkslategray), 1, 'cleared');
        await page.$eval('#txt2img_gallery', (g, src) => { g.innerHTML = `<div class="preview"><img src="${src}"></div>`; }, png);
        await click(page, 'bg-result');
        await page.waitForFunction(() => window.omostCanvasEditor.editors.txt2img.background !== null);
        assertColor(await pixel(page, 85, 5), expected, 2, 'gallery image behind the boxes');
        await closeEditor(page);
    });

    test('screenshot of the editor (saved to tests/artifacts/)', async () => {
        const page = await openEditor();
        const box = await canvasBox(page);
        await page.mouse.click(...at(box, 30, 30));
        const file = await shoot(page, 'omost_canvas_editor.png');
        const head = fs.readFileSync(file).subarray(0, 8);
        assert.deepEqual([...head], [137, 80, 78, 71, 13, 10, 26, 10], 'a PNG file');
        await closeEditor(page);
    });
});

/* Screenshot of the whole txt2img editor into tests/artifacts/ (git-ignored); returns the file. */
async function shoot(page, name) {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const file = path.join(ARTIFACTS, name);
    await page.locator('#omost_txt2img_canvas_editor .omost-ce').screenshot({ path: file });
    return file;
}
