// Screenshots of the four accordions in a running WebUI's txt2img tab (for docs/ and the README; not run by CI).
// Usage: node tests/browser/screenshot_accordions.mjs http://127.0.0.1:7861 docs gradio4
// Each accordion is opened (which ticks it, as Forge does), scrolled into view and saved as
// <dir>/accordion_<key>_<suffix>.png.
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, dir = 'docs', suffix = 'webui'] = process.argv.slice(2);
const KEYS = ['omost', 'refdrop', 'slothful', 'hidiffusion'];
const browser = await chromium.launch({
    executablePath: process.env.OMOST_CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
    const page = await browser.newPage({ viewport: { width: 1500, height: 1000 } });
    await page.goto(url, { waitUntil: 'load', timeout: 180000 });
    await page.waitForSelector('#omost_txt2img_omost_enabled', { timeout: 180000 });
    await page.waitForTimeout(3000);
    for (const key of KEYS) {
        const root = page.locator(`#omost_txt2img_${key}_enabled`).first();
        await root.scrollIntoViewIfNeeded();
        const header = root.locator('.label-wrap, .open-button, button, summary').first();
        await header.click();
        await page.waitForTimeout(1500);
        const file = path.join(dir, `accordion_${key}_${suffix}.png`);
        await root.screenshot({ path: file });
        console.log('saved', file, await root.boundingBox());
    }
} finally {
    await browser.close();
}
