// Receives a declared shipment from labd's console in headless Chromium at tablet width,
// typing barcodes into the intake's scan field as a USB scanner would. Called by the Rust test
// `a_declared_shipment_is_received_at_the_bench` with: URL TECHNICIAN_TOKEN SHIPMENT
// WRONG_BARCODE LOCATION OUT_DIR BARCODE... (the shipment's barcodes). Fails (exit 1) with a
// sentence when the page does not do its job.
import { chromium } from "playwright-core";

const [url, techToken, shipment, wrong, location, outDir, ...codes] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 768, height: 1024 } });
  page.setDefaultTimeout(20000);
  await page.goto(url);
  await page.fill("#token", techToken);
  await page.click("#login");

  // The work queue has the shipment: whose, which containers, how long since it was declared.
  const queued = page.locator(`#queue li[data-queue='intake'][data-run='${shipment}']`);
  await queued.waitFor();
  const entry = await queued.innerText();
  for (const words of ["intake · acme · ", `receive shipment ${shipment}: ${codes.length} containers`, ...codes, "due "]) {
    if (!entry.includes(words)) throw new Error(`the work queue's intake entry does not say "${words}": ${entry}`);
  }
  const card = page.locator(`[data-shipment='${shipment}']`);
  await card.waitFor();
  const listed = await card.locator("li[data-shipped]").count();
  if (listed !== codes.length) throw new Error(`the intake lists ${listed} containers, not ${codes.length}`);
  const receive = page.locator(`button[data-receive='${shipment}']`);
  if (!(await receive.isDisabled())) throw new Error("Receive is offered before anything was scanned");
  await page.screenshot({ path: `${outDir}/console-intake.png`, fullPage: true });

  // A barcode the shipment does not list is refused on the page and ticks nothing off.
  const scan = page.locator(`input[data-intake-scan='${shipment}']`);
  await scan.fill(wrong);
  await scan.press("Enter");
  const error = page.locator(`[data-intake-error='${shipment}']`);
  await page.waitForFunction((s) => document.querySelector(`[data-intake-error='${s}']`).textContent.includes("not in shipment"), shipment);
  const said = await error.innerText();
  if (!said.includes(wrong) || !said.includes("set it aside")) throw new Error(`the refusal says: ${said}`);

  // Each container scanned, in any order; Receive comes on only once all are.
  for (const [i, code] of [...codes].reverse().entries()) {
    await scan.fill(code);
    await scan.press("Enter");
    await page.waitForSelector(`[data-shipment='${shipment}'] li[data-shipped='${code}'].scanned`);
    const ready = !(await receive.isDisabled());
    if (ready !== (i === codes.length - 1)) throw new Error(`Receive is ${ready ? "on" : "off"} after ${i + 1} of ${codes.length} scans`);
  }
  await page.screenshot({ path: `${outDir}/console-intake-scanned.png`, fullPage: true });
  await page.fill(`input[data-intake-where='${shipment}']`, location);
  await receive.click();
  await page.waitForSelector("#no-shipments:not([hidden])");
  // The containers are in the inventory, where they were put.
  for (const code of codes) await page.waitForSelector(`#containers tr[data-container='${code}']`);
  const where = await page.locator(`#containers tr[data-container='${codes[0]}'] td:nth-child(4)`).innerText();
  console.log(`received ${codes.length} containers from the page into ${where}; refused: ${said}; queue: ${entry.split("\n")[0]}`);
} catch (e) {
  console.error(String(e && e.stack || e));
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
