// A whole dashboard session in headless Chromium: log in, upload a file to
// 100%, watch the job finish live, download its rejects; then the user name
// survives a reload, a Latin-1 file loads with the encoding option, a file
// whose every row is rejected shows as failed with its reason, its job page
// groups its rejects, a running job's page charts its throughput, and the
// page works 420 px wide. Prints what it checked; exits non-zero on the
// first failure.
//
// usage: node dashboard.mjs BASE_URL USER PASSWORD CSV_FILE OUT_DIR LATIN1_CSV ALL_BAD_CSV BIG_CSV
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const [base, user, password, csv, out, latin1, allBad, big] = process.argv.slice(2);
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

  // A reload keeps the session and the user's name.
  await page.reload();
  await page.waitForSelector("#model option[value=customer]", { state: "attached" });
  await page.waitForFunction((u) => document.querySelector("#who").textContent === u, user);
  console.log("after a reload: " + await page.textContent("#who"));

  // Upload with options: a Latin-1 file.
  const upload = async (file, setup) => {
    await page.click("#options summary");
    await setup();
    await page.setInputFiles("#file", file);
    const before = await page.getAttribute("#upload-text", "data-job");
    await page.click("#upload-btn");
    await page.waitForFunction((b) => {
      const t = document.querySelector("#upload-text");
      return t.dataset.job && t.dataset.job !== b || t.textContent.startsWith("upload failed");
    }, before, { timeout: 60000 });
    const text = await page.textContent("#upload-text");
    if (text.startsWith("upload failed")) fail(text);
    return await page.getAttribute("#upload-text", "data-job");
  };
  const latinJob = await upload(latin1, async () => { await page.selectOption("#opt-encoding", "latin1"); });
  const latinRow = page.locator(`tr[data-job="${latinJob}"]`);
  await latinRow.locator(".status.status-succeeded").waitFor({ timeout: 60000 });
  console.log("latin1 upload: succeeded, " + (await latinRow.locator(".committed").textContent()) + " committed");
  await page.selectOption("#opt-encoding", "");

  // Every row rejected: failed, with its reason, never a full green bar.
  const badJob = await upload(allBad, async () => {});
  const badRow = page.locator(`tr[data-job="${badJob}"]`);
  await badRow.locator(".status.status-failed").waitFor({ timeout: 60000 });
  const badWhy = await badRow.locator(".why").textContent();
  if (!badWhy.includes("no row was loaded")) fail("the failed job does not say why: " + badWhy);
  if (!(await badRow.locator(".bar").getAttribute("class")).includes("bar-failed")) fail("the failed job's bar is not marked failed");
  console.log("all rejected: failed: " + badWhy);

  // Its page: the reason, and the rejects grouped.
  await badRow.locator(".file a").click();
  await page.waitForFunction(() => document.querySelectorAll("#jp-groups tbody tr").length > 0);
  const err = await page.textContent("#jp-error");
  if (!err.includes("no row was loaded")) fail("the job page does not say why: " + err);
  const groupCount = (await page.locator("#jp-groups tbody tr").first().locator("td").first().textContent()).replace(/\D/g, "");
  await page.waitForFunction(() => document.querySelectorAll("#jp-rejects tbody tr").length >= 40);
  const pagedRows = await page.locator("#jp-rejects tbody tr").count();
  console.log(`job page: rejects grouped, ${groupCount} in the largest group, ${pagedRows} listed`);
  if (groupCount !== "40") fail("expected one group of 40 rejects, got " + groupCount);
  if (pagedRows !== 40) fail("expected the 40 rejects listed once, got " + pagedRows);
  await page.screenshot({ path: join(out, "job-failed.png") });

  // A running job's page charts its throughput.
  await page.goto(base + "/#/");
  await page.waitForSelector("#model option[value=customer]", { state: "attached" });
  const bigJob = await upload(big, async () => {});
  // In the page (no reload): samples seen since the upload are kept.
  await page.evaluate((id) => { location.hash = "#/jobs/" + id; }, bigJob);
  await page.waitForFunction(() => Number(document.querySelector("#jp-chart").dataset.points) >= 2, null, { timeout: 60000 });
  console.log("throughput chart: " + await page.getAttribute("#jp-chart", "data-points") + " points while running");
  await page.screenshot({ path: join(out, "job-running.png"), fullPage: true });
  await page.waitForFunction(() => document.querySelector("#jp-status").textContent.includes("succeeded"), null, { timeout: 120000 });

  // 420 px wide: nothing sticks out of the page.
  await page.setViewportSize({ width: 420, height: 900 });
  await page.goto(base + "/#/");
  await page.waitForSelector("#jobs tbody tr");
  const wide = await page.evaluate(() => document.documentElement.scrollWidth);
  console.log("at 420 px the page is " + wide + " px wide");
  if (wide > 420) fail("the page overflows at 420 px: " + wide);
  await page.screenshot({ path: join(out, "narrow.png"), fullPage: true });
  if (errors.length) fail("errors in the page: " + errors.join("; "));
} catch (e) {
  fail(e.stack || String(e));
} finally {
  await browser.close();
}
