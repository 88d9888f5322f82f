// Drives labd's technician console in Debian's headless Chromium. Called by the Rust test
// `the_console_works_in_chromium` with: URL TECHNICIAN_TOKEN SCIENTIST_TOKEN OWN_RUN OTHER_RUN
// OTHER_TENANT OUT_DIR RESULTS_RUN (the scientist's finished Bradford assay). Fails (exit 1) with a sentence when the page does not do its job.
import { chromium } from "playwright-core";

const [url, techToken, sciToken, ownRun, otherRun, otherTenant, outDir, resultsRun] = process.argv.slice(2);
const short = (id) => id.replace(/^run_/, "").slice(0, 8);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: ["--no-sandbox"] });
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("dialog", (d) => d.accept(d.type() === "prompt" ? "lamp change (console test)" : undefined));
  page.setDefaultTimeout(20000);

  // A technician signs in and sees the lab.
  await page.goto(url);
  await page.fill("#token", techToken);
  await page.click("#login");
  await page.waitForSelector("#instruments tbody tr[data-instrument='lh1']");
  const instruments = await page.locator("#instruments tbody tr").count();
  if (instruments < 5) throw new Error(`the instruments table shows ${instruments} instruments`);
  await page.waitForSelector("#instruments tbody tr[data-instrument='arm1']");
  await page.waitForFunction(() => document.querySelectorAll("#gantt rect.task").length > 0);
  const bars = await page.locator("#gantt rect.task").count();
  const lanes = await page.locator("#gantt text[data-lane]").count();
  // A time axis in clock time; zoomed to the next 2 hours, every tick within them, 30 min apart.
  const ticks = await page.locator("#gantt text.tick").allTextContents();
  if (ticks.length < 2 || !ticks.every((t) => /\d{1,2}:\d{2}/.test(t))) throw new Error(`no clock-time axis: ${ticks}`);
  await page.selectOption("#gantt-window", "2");
  await page.waitForFunction(() => {
    const at = [...document.querySelectorAll("#gantt text.tick")].map((t) => Number(t.dataset.at));
    return at.length >= 4 && at[1] - at[0] === 30 * 60000 && at[at.length - 1] <= Date.now() + 2 * 3600000 + 60000;
  });
  await page.selectOption("#gantt-window", "0");
  await page.waitForSelector(`#runs tbody tr[data-run='${otherRun}']`);
  await page.screenshot({ path: `${outDir}/console-technician.png`, fullPage: true });

  // The inventory: globex's plate with whose it is and where; the lab's lot of PBS, expired.
  const plate = page.locator("#containers tr[data-container='GX-0001']");
  await plate.waitFor();
  const plateRow = await plate.innerText();
  if (!plateRow.includes("globex") || !plateRow.includes("fridge1")) throw new Error(`the inventory row says: ${plateRow}`);
  const lot = await page.locator("#lots tr[data-lot='P-CONSOLE']").innerText();
  if (!lot.includes("PBS") || !lot.includes("EXPIRED") || !lot.includes("500.0 mL")) throw new Error(`the stock row says: ${lot}`);

  // The work queue has the manual step the lab waits for: whose run, due how long ago.
  const step = page.locator(`#queue li[data-queue='manual step'][data-run='${ownRun}']`);
  await step.waitFor();
  const queued = await step.innerText();
  // PCR setup's plate has been sealed and moved on: the queue says where it is now.
  if (!queued.includes("acme · ") || !/\(due \d+ (s|min|h).* ago\)/.test(queued) || !queued.includes("waiting on it: run ") ||
      !/where: .*pcr\w* at \w+/.test(queued)) {
    throw new Error(`the work queue's entry for the manual step says: ${queued}`);
  }

  // The manual step the lab is waiting for is done from the page.
  const open = page.locator("#interventions li.open").first();
  await open.waitFor();
  const what = await open.innerText();
  // It says how long it has waited and, to a technician, whose run it holds up.
  if (!/\(waiting \d+ (s|min|h)/.test(what)) throw new Error(`the open intervention does not say how long it has waited: ${what}`);
  if (!what.includes("acme · ")) throw new Error(`the technician is not told whose run waits: ${what}`);
  await open.locator("button[data-resolve='done']").click();
  await page.waitForFunction(() => document.querySelectorAll("#interventions li.open button").length === 0 ||
    !document.querySelector("#interventions li.open"));
  await page.waitForFunction((r) => !document.querySelector(`#queue li[data-run='${r}']`), ownRun);
  await page.screenshot({ path: `${outDir}/console-resolved.png`, fullPage: true });

  // Maintenance toggled from the page shows in the instrument's state.
  // The schedule shows it out of service, hatched from now on its lane, with why.
  await page.click("#instruments button[data-instrument='reader2']");
  await page.waitForSelector("#instruments tr[data-instrument='reader2'] td.state-maintenance");
  await page.waitForSelector("#gantt rect.unavailable[data-unavailable='reader2']");
  const band = await page.locator("#gantt text[data-unavailable-label='reader2']").textContent();
  if (!band.startsWith("maintenance")) throw new Error(`the Gantt's band on reader2 says: ${band}`);
  await page.screenshot({ path: `${outDir}/console-maintenance.png`, fullPage: true });
  await page.click("#instruments button[data-instrument='reader2']");
  await page.waitForFunction(() => !document.querySelector("#instruments tr[data-instrument='reader2'] td.state-maintenance"));
  await page.waitForFunction(() => !document.querySelector("#gantt rect.unavailable[data-unavailable='reader2']"));

  // The lab paused from the page, then resumed.
  await page.click("#pause-lab");
  await page.waitForFunction(() => document.getElementById("halt-state").textContent.startsWith("Lab paused by"));
  await page.click("#resume-lab");
  await page.waitForFunction(() => document.getElementById("halt-state").textContent === "Lab running");

  // What was done by hand from the page is in the audit trail on the page.
  for (const action of ["intervention_resolved", "maintenance_on", "maintenance_off", "paused", "resumed"]) {
    await page.waitForSelector(`#audit tbody tr[data-action='${action}']`);
  }

  // A scientist sees their own run, not the other tenant's run or name, and no instruments.
  await page.click("#logout");
  // Signed out, the page keeps nothing of the technician's view for the next user of the screen.
  const left = await page.evaluate(() => ["gantt", "runs", "interventions", "instruments", "audit", "queue", "containers", "lots"].map((id) => document.getElementById(id).innerHTML).join(""));
  if (left.includes(otherRun) || left.includes(ownRun) || left.includes("GX-0001")) throw new Error("the signed-out page still holds the last user's runs");
  await page.fill("#token", sciToken);
  await page.click("#login");
  await page.waitForSelector(`#runs tbody tr[data-run='${ownRun}']`);
  await page.waitForFunction(() => document.querySelectorAll("#gantt rect.task").length > 0);
  const text = await page.evaluate(() => document.body.innerText + document.getElementById("gantt").innerHTML);
  if (text.includes(otherRun) || text.includes(short(otherRun))) throw new Error("the scientist sees the other tenant's run");
  if (text.includes(otherTenant)) throw new Error("the scientist sees the other tenant's name");
  if (await page.locator("#instruments-panel").isVisible()) throw new Error("the scientist sees the instruments panel");
  if (await page.locator("#audit-panel").isVisible()) throw new Error("the scientist sees the audit trail");
  if (await page.locator("#queue-panel").isVisible()) throw new Error("the scientist sees the technicians' work queue");
  if (text.includes("GX-0001")) throw new Error("the scientist sees the other tenant's container");
  if (await page.locator("#stock-box").isVisible()) throw new Error("the scientist sees the lab's stock");
  await page.screenshot({ path: `${outDir}/console-scientist.png`, fullPage: true });

  // The scientist opens their Bradford assay's results: a heatmap of the read, the standard
  // curve with its fit, the lysates read off it, and the replicates' statistics.
  await page.click(`#runs button[data-results='${resultsRun}']`);
  await page.waitForSelector("#results svg.lw-heatmap rect.well");
  const cells = await page.locator("#results svg.lw-heatmap rect.well").count();
  if (cells !== 36) throw new Error(`the heatmap shows ${cells} wells, not the 36 read (A1:D9)`);
  const tip = await page.locator("#results svg.lw-heatmap rect.well[data-well='C1'] title").textContent();
  if (!tip.includes("sample lysate 1") || !tip.includes("group lysates")) throw new Error(`the C1 tooltip says: ${tip}`);
  const fitText = await page.locator("#results svg.lw-curve text.fit").first().textContent();
  const r2 = parseFloat((fitText.match(/R² = ([0-9.]+)/) || [])[1]);
  if (!(r2 > 0.999)) throw new Error(`the standard curve's fit: ${fitText}`);
  const points = await page.locator("#results svg.lw-curve circle.point").count();
  if (points !== 16) throw new Error(`the standard curve shows ${points} standards, not 16`);
  const unknowns = await page.locator("#results table.unknowns tr").count();
  if (unknowns !== 7) throw new Error(`the unknowns table has ${unknowns - 1} lysates, not 6`);
  const slope = await page.locator("#results table.fits tr:nth-child(3) td.value").textContent();
  await page.locator("#results-panel").screenshot({ path: `${outDir}/console-results.png` });
  console.log(JSON.stringify({ instruments, bars, lanes, resolved: what.split("\n")[0], cells, fit: fitText, slope }));
} catch (e) {
  console.error("console test: " + e.message);
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
