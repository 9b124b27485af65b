/* sd-forge-omost: canvas model for the browser editor (pure functions, no DOM).
 *
 * Reads and writes the "omost-canvas" v1 JSON form (regions in program order, rect = [top, bottom, left,
 * right] in the 90x90 grid, end-exclusive, distance > 0, larger = farther). Also reads the ComfyUI_omost
 * list form. Everything lives on the one global object window.omostCanvasEditor (key "model").
 */
(function () {
    'use strict';

    var ns = window.omostCanvasEditor = window.omostCanvasEditor || {};

    var GRID = 90;
    var MIN_SIZE = 1;  // smallest box edge, in grid units

    // Generated from lib_omost/canvas/_color_table.py by its write_js_table(); name:rrggbb.
    var COLOR_TABLE = (
        'aliceblue:f0f8ff antiquewhite:faebd7 aqua:00ffff aquamarine:7fffd4 azure:f0ffff beige:f5f5dc bisque:ffe4c4 ' +
        'black:000000 blanchedalmond:ffebcd blue:0000ff blueviolet:8a2be2 brown:a52a2a burlywood:deb887 ' +
        'cadetblue:5f9ea0 chartreuse:7fff00 chocolate:d2691e coral:ff7f50 cornflowerblue:6495ed cornsilk:fff8dc ' +
        'crimson:dc143c cyan:00ffff darkblue:00008b darkcyan:008b8b darkgoldenrod:b8860b darkgray:a9a9a9 ' +
        'darkgreen:006400 darkgrey:a9a9a9 darkkhaki:bdb76b darkmagenta:8b008b darkolivegreen:556b2f ' +
        'darkorange:ff8c00 darkorchid:9932cc darkred:8b0000 darksalmon:e9967a darkseagreen:8fbc8f ' +
        'darkslateblue:483d8b darkslategray:2f4f4f darkslategrey:2f4f4f darkturquoise:00ced1 darkviolet:9400d3 ' +
        'deeppink:ff1493 deepskyblue:00bfff dimgray:696969 dimgrey:696969 dodgerblue:1e90ff firebrick:b22222 ' +
        'floralwhite:fffaf0 forestgreen:228b22 fuchsia:ff00ff gainsboro:dcdcdc ghostwhite:f8f8ff gold:ffd700 ' +
        'goldenrod:daa520 gray:808080 green:008000 greenyellow:adff2f grey:808080 honeydew:f0fff0 hotpink:ff69b4 ' +
        'indianred:cd5c5c indigo:4b0082 ivory:fffff0 khaki:f0e68c lavender:e6e6fa lavenderblush:fff0f5 ' +
        'lawngreen:7cfc00 lemonchiffon:fffacd lightblue:add8e6 lightcoral:f08080 lightcyan:e0ffff ' +
        'lightgoldenrodyellow:fafad2 lightgray:d3d3d3 lightgreen:90ee90 lightgrey:d3d3d3 lightpink:ffb6c1 ' +
        'lightsalmon:ffa07a lightseagreen:20b2aa lightskyblue:87cefa lightslategray:778899 lightslategrey:778899 ' +
        'lightsteelblue:b0c4de lightyellow:ffffe0 lime:00ff00 limegreen:32cd32 linen:faf0e6 magenta:ff00ff ' +
        'maroon:800000 mediumaquamarine:66cdaa mediumblue:0000cd mediumorchid:ba55d3 mediumpurple:9370db ' +
        'mediumseagreen:3cb371 mediumslateblue:7b68ee mediumspringgreen:00fa9a mediumturquoise:48d1cc ' +
        'mediumvioletred:c71585 midnightblue:191970 mintcream:f5fffa mistyrose:ffe4e1 moccasin:ffe4b5 ' +
        'navajowhite:ffdead navy:000080 navyblue:000080 oldlace:fdf5e6 olive:808000 olivedrab:6b8e23 orange:ffa500 ' +
        'orangered:ff4500 orchid:da70d6 palegoldenrod:eee8aa palegreen:98fb98 paleturquoise:afeeee ' +
        'palevioletred:db7093 papayawhip:ffefd5 peachpuff:ffdab9 peru:cd853f pink:ffc0cb plum:dda0dd ' +
        'powderblue:b0e0e6 purple:800080 rebeccapurple:663399 red:ff0000 rosybrown:bc8f8f royalblue:4169e1 ' +
        'saddlebrown:8b4513 salmon:fa8072 sandybrown:f4a460 seagreen:2e8b57 seashell:fff5ee sienna:a0522d ' +
        'silver:c0c0c0 skyblue:87ceeb slateblue:6a5acd slategray:708090 slategrey:708090 snow:fffafa ' +
        'springgreen:00ff7f steelblue:4682b4 tan:d2b48c teal:008080 thistle:d8bfd8 tomato:ff6347 turquoise:40e0d0 ' +
        'violet:ee82ee wheat:f5deb3 white:ffffff whitesmoke:f5f5f5 yellow:ffff00 yellowgreen:9acd32 '
    );
    // End of the generated colour table.

    var COLORS = {};
    COLOR_TABLE.trim().split(/\s+/).forEach(function (item) {
        var parts = item.split(':');
        var hex = parts[1];
        COLORS[parts[0]] = [0, 2, 4].map(function (k) { return parseInt(hex.slice(k, k + 2), 16); });
    });
    var COLOR_NAMES = Object.keys(COLORS);

    var LOCATIONS = {
        'in the center': [45, 45], 'on the left': [15, 45], 'on the right': [75, 45],
        'on the top': [45, 15], 'on the bottom': [45, 75], 'on the top-left': [15, 15],
        'on the top-right': [75, 15], 'on the bottom-left': [15, 75], 'on the bottom-right': [75, 75]
    };
    var OFFSETS = {
        'no offset': [0, 0], 'slightly to the left': [-10, 0], 'slightly to the right': [10, 0],
        'slightly to the upper': [0, -10], 'slightly to the lower': [0, 10],
        'slightly to the upper-left': [-10, -10], 'slightly to the upper-right': [10, -10],
        'slightly to the lower-left': [-10, 10], 'slightly to the lower-right': [10, 10]
    };
    var AREAS = {  // [width, height]
        'a small square area': [50, 50], 'a small vertical area': [40, 60], 'a small horizontal area': [60, 40],
        'a medium-sized square area': [60, 60], 'a medium-sized vertical area': [50, 80],
        'a medium-sized horizontal area': [80, 50], 'a large square area': [70, 70],
        'a large vertical area': [60, 90], 'a large horizontal area': [90, 60]
    };
    var TEXT_FIELDS = ['description', 'tags', 'atmosphere', 'style', 'quality_meta'];
    var NEW_REGION_COLORS = ['crimson', 'royalblue', 'gold', 'seagreen', 'darkorange', 'orchid', 'teal', 'sienna'];

    function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
    function round2(v) { return Math.round(v * 100) / 100; }
    function clone(obj) { return JSON.parse(JSON.stringify(obj)); }

    /* [top, bottom, left, right] implied by the three Omost phrases (OMOST.md "Geometry"). */
    function rectFromLocation(location, offset, area) {
        var c = LOCATIONS[location], o = OFFSETS[offset], a = AREAS[area];
        if (!c || !o || !a) {
            throw new Error('unknown location/offset/area: ' + JSON.stringify([location, offset, area]));
        }
        var x = c[0] + o[0], y = c[1] + o[1], hw = Math.floor(a[0] / 2), hh = Math.floor(a[1] / 2);
        return [clamp(y - hh, 0, GRID), clamp(y + hh, 0, GRID), clamp(x - hw, 0, GRID), clamp(x + hw, 0, GRID)];
    }

    /* A colour as [r, g, b], or null when it is neither a known name nor three 0-255 integers. */
    function colorRgb(color) {
        if (typeof color === 'string') {
            return COLORS[color.toLowerCase()] || null;
        }
        if (Array.isArray(color) && color.length === 3 && color.every(function (v) {
            return Number.isInteger(v) && v >= 0 && v <= 255;
        })) {
            return color.slice();
        }
        return null;
    }

    function colorNameOf(rgb) {
        for (var i = 0; i < COLOR_NAMES.length; i++) {
            var c = COLORS[COLOR_NAMES[i]];
            if (c[0] === rgb[0] && c[1] === rgb[1] && c[2] === rgb[2]) return COLOR_NAMES[i];
        }
        return null;
    }

    /* Names matching a typed query: exact first, then prefix, then substring matches (spaces ignored). */
    function matchColorNames(query) {
        var q = query.trim().toLowerCase().replace(/\s+/g, '');
        if (!q) return COLOR_NAMES.slice();
        var rank = function (name) { return name === q ? 0 : name.indexOf(q) === 0 ? 1 : 2; };
        return COLOR_NAMES.filter(function (name) { return name.indexOf(q) >= 0; })
            .sort(function (a, b) { return rank(a) - rank(b) || (a < b ? -1 : 1); });
    }

    function cssColor(color) {
        var c = colorRgb(color) || [128, 128, 128];
        return 'rgb(' + c[0] + ', ' + c[1] + ', ' + c[2] + ')';
    }

    /* Region indices far to near: distance descending, ties keep program order. */
    function orderedIndices(doc) {
        return doc.regions.map(function (r, i) { return i; }).sort(function (a, b) {
            return (doc.regions[b].distance - doc.regions[a].distance) || (a - b);
        });
    }

    /* Stable JSON with sorted keys, to compare canvases whatever the key order of the text. */
    function canonical(value) {
        if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']';
        if (value && typeof value === 'object') {
            return '{' + Object.keys(value).sort().map(function (k) {
                return JSON.stringify(k) + ':' + canonical(value[k]);
            }).join(',') + '}';
        }
        return JSON.stringify(value);
    }

    function serialize(doc) { return JSON.stringify(doc, null, 2); }

    /* Same canvas whatever the key order, number spelling (5 / 5.0) or an omitted default weight. */
    function sameCanvas(a, b) {
        var key = function (doc) {
            var d = clone(doc);
            d.regions.forEach(function (r) { if (r.weight === undefined) r.weight = 1; });
            return canonical(d);
        };
        return key(a) === key(b);
    }

    // ---- validation -------------------------------------------------------------------------------

    function FormatError(path, message) {
        this.name = 'FormatError';
        this.message = (path ? path + ': ' : '') + message;
    }
    FormatError.prototype = Object.create(Error.prototype);

    function describe(value) {
        var s = JSON.stringify(value);
        return s === undefined ? String(value) : (s.length > 40 ? s.slice(0, 37) + '...' : s);
    }

    function checkString(obj, key, path) {
        if (obj[key] === undefined || obj[key] === null) { obj[key] = ''; return; }
        if (typeof obj[key] !== 'string') {
            throw new FormatError(path + '.' + key, 'must be a string, got ' + describe(obj[key]));
        }
    }

    /* The optional negative prompt: a string, dropped when empty (the canvas JSON omits it then). */
    function checkNegative(obj, path) {
        var v = obj.negative;
        if (v === undefined || v === null || v === '') { delete obj.negative; return; }
        if (typeof v !== 'string') {
            throw new FormatError(path + '.negative', 'must be a string (a negative prompt), got ' + describe(v));
        }
    }

    function checkLines(obj, path) {
        var v = obj.detailed_descriptions;
        if (v === undefined || v === null) { obj.detailed_descriptions = []; return; }
        if (!Array.isArray(v) || !v.every(function (s) { return typeof s === 'string'; })) {
            throw new FormatError(path + '.detailed_descriptions', 'must be a list of strings, got ' + describe(v));
        }
    }

    function checkColor(obj, path) {
        var rgb = colorRgb(obj.color);
        if (!rgb) {
            throw new FormatError(path + '.color', 'must be one of the 149 HTML colour names (e.g. "darkgoldenrod")' +
                ' or [r, g, b] with integers 0-255, got ' + describe(obj.color));
        }
        if (typeof obj.color === 'string') obj.color = obj.color.toLowerCase();
    }

    function isNumber(v) { return typeof v === 'number' && isFinite(v); }

    function checkRegion(region, path) {
        if (!region || typeof region !== 'object' || Array.isArray(region)) {
            throw new FormatError(path, 'must be an object, got ' + describe(region));
        }
        var rect = region.rect;
        if (!Array.isArray(rect) || rect.length !== 4 || !rect.every(isNumber)) {
            throw new FormatError(path + '.rect', 'must be [top, bottom, left, right] (4 numbers), got ' + describe(rect));
        }
        if (!rect.every(function (v) { return v >= 0 && v <= GRID; })) {
            throw new FormatError(path + '.rect', 'numbers must lie in [0, 90], got ' + describe(rect));
        }
        if (!(rect[0] < rect[1]) || !(rect[2] < rect[3])) {
            throw new FormatError(path + '.rect', 'needs top < bottom and left < right, got ' + describe(rect));
        }
        var phrases = [['location', LOCATIONS], ['offset', OFFSETS], ['area', AREAS]];
        phrases.forEach(function (p) {
            var v = region[p[0]];
            if (v === undefined) { region[p[0]] = null; return; }
            if (v !== null && !Object.prototype.hasOwnProperty.call(p[1], v)) {
                throw new FormatError(path + '.' + p[0], 'must be null or one of ' +
                    Object.keys(p[1]).map(JSON.stringify).join(', ') + '; got ' + describe(v));
            }
        });
        if (region.location !== null && region.offset !== null && region.area !== null) {
            var implied = rectFromLocation(region.location, region.offset, region.area);
            if (implied.some(function (v, k) { return v !== rect[k]; })) {
                throw new FormatError(path + '.rect', describe(rect) + ' differs from ' + describe(implied) +
                    ' implied by location/offset/area (set them to null for a free rectangle)');
            }
        }
        if (!isNumber(region.distance) || !(region.distance > 0)) {
            throw new FormatError(path + '.distance', 'must be a number > 0, got ' + describe(region.distance));
        }
        TEXT_FIELDS.forEach(function (k) { checkString(region, k, path); });
        checkNegative(region, path);
        checkLines(region, path);
        checkColor(region, path);
        if (region.weight !== undefined && !(isNumber(region.weight) && region.weight >= 0 && region.weight <= 2)) {
            throw new FormatError(path + '.weight', 'must be a number in [0, 2], got ' + describe(region.weight));
        }
    }

    /* Validated deep copy of an "omost-canvas" object (missing text fields become empty). */
    function validateCanvas(obj) {
        if (!obj || typeof obj !== 'object' || Array.isArray(obj)) {
            throw new FormatError('', 'the canvas must be a JSON object {"format": "omost-canvas", ...} ' +
                'or the ComfyUI list form, got ' + describe(obj));
        }
        var doc = clone(obj);
        if (doc.format !== undefined && doc.format !== 'omost-canvas') {
            throw new FormatError('format', 'must be "omost-canvas", got ' + describe(doc.format));
        }
        if (doc.version !== undefined && doc.version !== 1) {
            throw new FormatError('version', 'must be 1, got ' + describe(doc.version));
        }
        var g = doc.global;
        if (!g || typeof g !== 'object' || Array.isArray(g)) {
            throw new FormatError('global', 'must be an object with description, detailed_descriptions, tags ' +
                'and color, got ' + describe(g));
        }
        checkString(g, 'description', 'global');
        checkString(g, 'tags', 'global');
        checkLines(g, 'global');
        checkNegative(g, 'global');
        checkColor(g, 'global');
        if (!Array.isArray(doc.regions)) {
            throw new FormatError('regions', 'must be a list, got ' + describe(doc.regions));
        }
        doc.regions.forEach(function (r, i) { checkRegion(r, 'regions[' + i + ']'); });
        return doc;
    }

    /* The ComfyUI_omost list (global first, then far to near) as our form. */
    function fromComfyList(list) {
        if (list.length === 0) throw new FormatError('', 'the ComfyUI list is empty (it needs the global element)');
        var items = list.map(function (item, i) {
            var path = '[' + i + ']';
            if (!item || typeof item !== 'object' || Array.isArray(item)) {
                throw new FormatError(path, 'must be an object with rect, prefixes, suffixes, color');
            }
            ['prefixes', 'suffixes'].forEach(function (k) {
                if (!Array.isArray(item[k]) || !item[k].every(function (s) { return typeof s === 'string'; })) {
                    throw new FormatError(path + '.' + k, 'must be a list of strings, got ' + describe(item[k]));
                }
            });
            var rgb = colorRgb(item.color);
            if (!rgb) throw new FormatError(path + '.color', 'must be [r, g, b] (0-255), got ' + describe(item.color));
            return { rect: item.rect, prefixes: item.prefixes, suffixes: item.suffixes, color: colorNameOf(rgb) || rgb };
        });
        var n = items.length - 1;
        var doc = {
            format: 'omost-canvas',
            version: 1,
            global: {
                description: items[0].prefixes[0] || '',
                detailed_descriptions: items[0].suffixes.slice(),
                tags: '',
                color: items[0].color
            },
            regions: items.slice(1).map(function (item, k) {
                return {
                    location: null, offset: null, area: null, rect: item.rect, distance: n - k,
                    description: item.prefixes.length ? item.prefixes[item.prefixes.length - 1] : '',
                    detailed_descriptions: item.suffixes.slice(), tags: '', atmosphere: '', style: '',
                    quality_meta: '', color: item.color
                };
            })
        };
        return validateCanvas(doc);
    }

    function blankCanvas() {
        return {
            format: 'omost-canvas', version: 1,
            global: { description: '', detailed_descriptions: [], tags: '', color: 'white' },
            regions: []
        };
    }

    /* Where and why JSON text is malformed: {offset, what}, or null when this scan finds no fault.
     * Browsers word (and place) JSON.parse errors differently; this gives one clear message everywhere. */
    function jsonSyntaxError(text) {
        var i = 0, n = text.length;
        var show = function (k) {
            return k >= n ? 'the end of the text' : text[k] === '\n' ? 'a line break' : "'" + text[k] + "'";
        };
        var fail = function (what) { throw { offset: i, what: what }; };
        var ws = function () { while (i < n && ' \t\n\r'.indexOf(text[i]) >= 0) i++; };
        var string = function () {
            for (i++; i < n; i++) {
                if (text[i] === '"') { i++; return; }
                if (text[i] === '\\') i++;
                else if (text[i] < ' ') fail('a line break or control character inside a string (write \\n)');
            }
            fail('a string is not closed with "');
        };
        var number = function () {
            var re = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
            re.lastIndex = i;
            if (!re.exec(text) || re.lastIndex === i) fail('a malformed number');
            i = re.lastIndex;
        };
        var value = function () {
            ws();
            var c = text[i];
            if (c === '{') return container('}', 'a property value', true);
            if (c === '[') return container(']', 'a list item', false);
            if (c === '"') return string();
            if (c === '-' || (c >= '0' && c <= '9')) return number();
            for (var w = 0, words = ['true', 'false', 'null']; w < words.length; w++) {
                if (text.startsWith(words[w], i)) { i += words[w].length; return; }
            }
            fail('expected a value, found ' + show(i) + (c === "'" ? ' (JSON strings use double quotes)' : ''));
        };
        var container = function (close, item, keyed) {
            i++;
            ws();
            if (text[i] === close) { i++; return; }
            for (;;) {
                ws();
                if (keyed) {
                    if (text[i] !== '"') fail('expected a "quoted" property name, found ' + show(i));
                    string();
                    ws();
                    if (text[i] !== ':') fail("expected ':' after the property name, found " + show(i));
                    i++;
                }
                value();
                ws();
                if (text[i] === ',') { i++; continue; }
                if (text[i] === close) { i++; return; }
                fail("expected ',' or '" + close + "' after " + item + ', found ' + show(i));
            }
        };
        try {
            value();
            ws();
            if (i < n) fail('unexpected ' + show(i) + ' after the end of the JSON value');
        } catch (e) {
            if (e && typeof e.offset === 'number') return e;
            throw e;
        }
        return null;
    }

    function lineColumn(text, offset) {
        var before = text.slice(0, offset).split('\n');
        return 'line ' + before.length + ', column ' + (before[before.length - 1].length + 1);
    }

    /* {ok: true, doc, note} or {ok: false, message} for the text of the canvas box. */
    function parseCanvasText(text) {
        if (!text.trim()) {
            return { ok: true, doc: blankCanvas(), note: 'The canvas box is empty: editing starts from a blank canvas.' };
        }
        var obj;
        try {
            obj = JSON.parse(text);
        } catch (e) {
            var fault = jsonSyntaxError(text);
            return {
                ok: false,
                message: 'Bad JSON in the canvas box' +
                    (fault ? ' (' + lineColumn(text, fault.offset) + '): ' + fault.what : ': ' + e.message)
            };
        }
        try {
            if (Array.isArray(obj)) {
                return { ok: true, doc: fromComfyList(obj), note: 'Read the ComfyUI list form; an edit writes the omost-canvas form.' };
            }
            return { ok: true, doc: validateCanvas(obj), note: '' };
        } catch (e) {
            if (!(e instanceof FormatError)) throw e;
            return { ok: false, message: 'Not a valid canvas: ' + e.message };
        }
    }

    // ---- edits (pure: they take and return rects, or mutate the doc they are given) ------------------

    function snapValue(v, snap) { return snap ? Math.round(v) : round2(v); }

    /* Shift a rect by (dx, dy) grid units; the box keeps its size and stays inside the grid. An axis
     * without movement is left as it is (no snapping of a free edge by a purely sideways drag). */
    function moveRect(rect, dx, dy, snap) {
        var t = rect[0], b = rect[1], l = rect[2], r = rect[3];
        var ddx = dx === 0 ? 0 : clamp(snapValue(l + dx, snap) - l, -l, GRID - r);
        var ddy = dy === 0 ? 0 : clamp(snapValue(t + dy, snap) - t, -t, GRID - b);
        return [round2(t + ddy), round2(b + ddy), round2(l + ddx), round2(r + ddx)];
    }

    /* Move the chosen edges ({top, bottom, left, right} booleans) by (dx, dy); the box keeps >= 1 unit. */
    function resizeRect(rect, edges, dx, dy, snap) {
        var t = rect[0], b = rect[1], l = rect[2], r = rect[3];
        if (edges.top && dy !== 0) t = clamp(snapValue(t + dy, snap), 0, b - MIN_SIZE);
        if (edges.bottom && dy !== 0) b = clamp(snapValue(b + dy, snap), t + MIN_SIZE, GRID);
        if (edges.left && dx !== 0) l = clamp(snapValue(l + dx, snap), 0, r - MIN_SIZE);
        if (edges.right && dx !== 0) r = clamp(snapValue(r + dx, snap), l + MIN_SIZE, GRID);
        return [round2(t), round2(b), round2(l), round2(r)];
    }

    /* A new rect makes the box free: location/offset/area no longer describe it. */
    function setRegionRect(region, rect) {
        if (region.rect.every(function (v, k) { return v === rect[k]; })) return false;
        region.rect = rect.slice();
        region.location = null;
        region.offset = null;
        region.area = null;
        return true;
    }

    /* The roundest number strictly between lo and hi. */
    function roundBetween(lo, hi) {
        var mid = (lo + hi) / 2;
        for (var digits = 0; digits <= 6; digits++) {
            var f = Math.pow(10, digits), v = Math.round(mid * f) / f;
            if (v > lo && v < hi) return v;
        }
        return mid;
    }

    /* Distance for a box placed between a farther one (distance far) and a nearer one (near); null = none. */
    function distanceBetween(far, near) {
        if (far === null && near === null) return 5;
        if (far === null) return Math.floor(near) + 1;
        if (near === null) return roundBetween(0, far);
        return far > near ? roundBetween(near, far) : null;
    }

    /* Give region i the position q in the far-to-near order by changing its distance (all distances are
     * renumbered only when ties leave no room). */
    function placeAt(doc, i, q) {
        var order = orderedIndices(doc).filter(function (j) { return j !== i; });
        order.splice(q, 0, i);
        var dist = function (k) { return k >= 0 && k < order.length ? doc.regions[order[k]].distance : null; };
        var d = distanceBetween(dist(q - 1), dist(q + 1));
        if (d !== null) doc.regions[i].distance = d;
        var now = orderedIndices(doc);
        if (d === null || now.some(function (j, k) { return j !== order[k]; })) {
            order.forEach(function (j, k) { doc.regions[j].distance = order.length - k; });
        }
    }

    /* Move region i one step ('farther' / 'nearer') or to the end ('farthest' / 'nearest') of the depth order. */
    function reorder(doc, i, where) {
        var order = orderedIndices(doc), p = order.indexOf(i), n = order.length;
        var q = { farther: p - 1, nearer: p + 1, farthest: 0, nearest: n - 1 }[where];
        if (q === undefined) throw new Error('reorder: unknown direction ' + where);
        q = clamp(q, 0, n - 1);
        if (q === p) return false;
        placeAt(doc, i, q);
        return true;
    }

    /* Append a new free box nearest to the viewer; returns its index. */
    function addRegion(doc) {
        var used = doc.regions.map(function (r) { return r.color; });
        var color = NEW_REGION_COLORS.filter(function (c) { return used.indexOf(c) < 0; })[0] ||
            NEW_REGION_COLORS[doc.regions.length % NEW_REGION_COLORS.length];
        doc.regions.push({
            location: null, offset: null, area: null, rect: [30, 60, 30, 60], distance: 1,
            description: 'New region', detailed_descriptions: [], tags: '', atmosphere: '', style: '',
            quality_meta: '', color: color, weight: 1.0
        });
        var i = doc.regions.length - 1;
        placeAt(doc, i, doc.regions.length - 1);
        return i;
    }

    /* Copy region i right after it (program order), shifted by 5 units and just nearer; returns the copy's index. */
    function duplicateRegion(doc, i) {
        var copy = clone(doc.regions[i]);
        var pos = orderedIndices(doc).indexOf(i);
        setRegionRect(copy, moveRect(copy.rect, 5, 5, false));
        doc.regions.splice(i + 1, 0, copy);
        placeAt(doc, i + 1, pos + 1);
        return i + 1;
    }

    function deleteRegion(doc, i) { doc.regions.splice(i, 1); }

    ns.model = {
        GRID: GRID,
        COLORS: COLORS,
        COLOR_NAMES: COLOR_NAMES,
        LOCATIONS: Object.keys(LOCATIONS),
        OFFSETS: Object.keys(OFFSETS),
        AREAS: Object.keys(AREAS),
        rectFromLocation: rectFromLocation,
        colorRgb: colorRgb,
        colorNameOf: colorNameOf,
        matchColorNames: matchColorNames,
        cssColor: cssColor,
        orderedIndices: orderedIndices,
        canonical: canonical,
        sameCanvas: sameCanvas,
        serialize: serialize,
        clone: clone,
        validateCanvas: validateCanvas,
        parseCanvasText: parseCanvasText,
        jsonSyntaxError: jsonSyntaxError,
        moveRect: moveRect,
        resizeRect: resizeRect,
        setRegionRect: setRegionRect,
        reorder: reorder,
        addRegion: addRegion,
        duplicateRegion: duplicateRegion,
        deleteRegion: deleteRegion
    };
})();
