// Kits a run from labd's console in headless Chromium at tablet width, typing barcodes into the
// scan field as a USB scanner would. Called by the Rust test
// `a_run_waits_until_technicians_kit_it_by_barcode` with: URL TECHNICIAN_TOKEN RUN WRONG_BARCODE
// OUT_DIR BARCODE... (the items' barcodes in list order). Fails (exit 1) with a sentence when
// the page does not do its job.
import { chromium } from "playwright-core";

const [url, techToken, run, wrong, outDir, ...codes] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 768, height: 1024 } });
  page.setDefaultTimeout(20000);
  // Alerts on, as the technician left them; the browser's notifications recorded, not shown.
  await page.addInitScript(() => {
    localStorage.setItem("labwright-alerts", "on");
    window.notified = [];
    window.Notification = class {
      static permission = "granted";
      static requestPermission() { return Promise.resolve("granted"); }
      constructor(title, options) { window.notified.push(title + ": " + options.body); }
    };
  });
  await page.goto(url);
  await page.fill("#token", techToken);
  await page.click("#login");
  const list = page.locator(`[data-picks='${run}']`);
  await list.waitFor();
  const items = await list.locator("li[data-pick]").count();
  if (items !== codes.length) throw new Error(`the kitting page lists ${items} items, not ${codes.length}`);
  await page.screenshot({ path: `${outDir}/console-kitting.png`, fullPage: true });

  // The work queue has the pick list: whose run, how many items, from where, what waits on it;
  // and the technician was notified that it is due.
  const queued = page.locator(`#queue li[data-queue='kitting'][data-run='${run}']`);
  await queued.waitFor();
  const entry = await queued.innerText();
  for (const words of ["acme · ", `${codes.length} items to fetch`, "where: ", "waiting on it: run "]) {
    if (!entry.includes(words)) throw new Error(`the work queue's kitting entry does not say "${words}": ${entry}`);
  }
  await page.waitForFunction(() => window.notified.length > 0);
  const note = await page.evaluate(() => window.notified.join("\n"));
  if (!note.startsWith("Labwright: kitting due") || !note.includes(run.replace(/^run_/, "").slice(0, 8))) {
    throw new Error(`the notification says: ${note}`);
  }

  // A wrong barcode is refused on the page, naming the one expected.
  const scan = page.locator(`input[data-scan='${run}']`);
  await scan.fill(wrong);
  await scan.press("Enter");
  const error = page.locator(`[data-scan-error='${run}']`);
  await page.waitForFunction((r) => document.querySelector(`[data-scan-error='${r}']`).textContent.includes("expects barcode"), run);
  const said = await error.innerText();
  if (!said.includes(codes[0])) throw new Error(`the refusal does not name the expected barcode: ${said}`);
  await page.screenshot({ path: `${outDir}/console-kitting-refused.png`, fullPage: true });

  // Each barcode scanned, in any order: the list shrinks until the run is gone from the page.
  for (const code of [...codes].reverse()) {
    const before = await page.locator(`[data-picks='${run}'] li[data-pick]`).count();
    await page.locator(`input[data-scan='${run}']`).fill(code);
    await page.locator(`input[data-scan='${run}']`).press("Enter");
    await page.waitForFunction(([r, n]) => document.querySelectorAll(`[data-picks='${r}'] li[data-pick]`).length < n, [run, before]);
  }
  await page.waitForSelector("#no-picks:not([hidden])");
  await page.waitForSelector("#no-queue:not([hidden])");
  console.log(`kitted ${codes.length} items from the page; refused: ${said}; queue: ${entry.split("\n")[0]}; notified: ${note}`);
} catch (e) {
  console.error(String(e && e.stack || e));
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
