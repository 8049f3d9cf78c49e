// A whole dashboard session in headless Chromium: log in, upload a file to
// 100%, watch the job finish live, download its rejects. Prints what it
// checked; exits non-zero on the first failure.
//
// usage: node dashboard.mjs BASE_URL USER PASSWORD CSV_FILE OUT_DIR
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [base, user, password, csv, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.NEXUS_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const fail = (msg) => { console.error("FAIL: " + msg); process.exitCode = 1; };
try {
  const page = await browser.newPage({ acceptDownloads: true });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.goto(base + "/");
  await page.fill("#password", "wrong password");
  await page.fill("#username", user);
  await page.click("#login-form button");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.length > 0);
  console.log("wrong password refused: " + await page.textContent("#login-error"));
  errors.length = 0; // the refused login's 401 was expected
  await page.fill("#password", password);
  await page.click("#login-form button");
  await page.waitForSelector("#model option[value=customer]", { state: "attached" });
  await page.selectOption("#model", "customer");
  await page.setInputFiles("#file", csv);
  await page.click("#upload-btn");
  await page.waitForFunction(() => document.querySelector("#upload-progress").value === 100);
  console.log("upload: " + await page.textContent("#upload-text"));
  await page.waitForSelector("#live.on");
  const row = page.locator("#jobs tbody tr").first();
  await row.locator(".status.status-succeeded").waitFor({ timeout: 60000 });
  const pct = await row.locator(".bar").getAttribute("data-pct");
  if (pct !== "100") fail("the progress bar is at " + pct + "%");
  const committed = (await row.locator(".committed").textContent()).replace(/\D/g, "");
  const rejected = (await row.locator(".rejected").textContent()).replace(/\D/g, "");
  console.log(`job succeeded: ${committed} committed, ${rejected} rejected, bar ${pct}%`);
  if (committed !== "995" || rejected !== "5") fail("unexpected counts");
  const [download] = await Promise.all([page.waitForEvent("download"), row.locator(".rejects-link").click()]);
  const file = join(out, download.suggestedFilename());
  await download.saveAs(file);
  const lines = readFileSync(file, "utf8").trim().split("\n");
  console.log(`rejects download: ${download.suggestedFilename()}, ${lines.length - 1} rows`);
  if (lines[0] !== "line,column,reason,raw" || lines.length !== 6) fail("bad rejects file: " + lines[0]);
  await page.screenshot({ path: join(out, "dashboard.png"), fullPage: true });
  if (errors.length) fail("errors in the page: " + errors.join("; "));
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await browser.close();
}
